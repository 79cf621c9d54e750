//! Activities: service and send tasks (and message throw and end events, which run a send
//! handler the same way), receive and user tasks, the handlers they call, execution
//! listeners, and what happens when a handler fails (retry as a job, or fail the instance).

use super::*;

impl Engine {
    /// Runs a task, or a message throw or end event: its handler, then onward; a receive or
    /// user task waits.
    pub(super) async fn execute_activity(
        &self,
        process: &Process,
        instance: &mut Instance,
        token: Token,
        node: &Node,
        job: Option<(Option<u32>, i64)>,
    ) -> Result<()> {
        match &node.kind {
            NodeKind::ServiceTask
            | NodeKind::SendTask
            | NodeKind::IntermediateThrowEvent(Trigger::Message(_))
            | NodeKind::EndEvent(Trigger::Message(_)) => {
                if let Some(behaviour) = &node.behaviour {
                    match self
                        .call(instance, node, &token, behaviour, &node.fields, None)
                        .await
                    {
                        Ok(()) => {}
                        Err(HandlerError::Bpmn { code, message }) => {
                            return self.throw_error(instance, &token, &code, &message)
                        }
                        Err(HandlerError::Failed(reason)) => {
                            return self.handler_failed(instance, node, &token, job, reason)
                        }
                    }
                }
                if matches!(node.kind, NodeKind::EndEvent(_)) {
                    self.consume(process, instance, token.id)
                } else {
                    self.set_leaving(instance, &token, None)
                }
            }
            NodeKind::ReceiveTask { message } => {
                let event = self.event_of(
                    instance,
                    token.scope,
                    node,
                    &Trigger::Message(message.clone()),
                )?;
                self.wait(
                    process,
                    instance,
                    &token,
                    vec![(node.id.clone(), event, Effect::Complete)],
                )
            }
            NodeKind::UserTask { .. } => {
                for listener in node.task_listeners.iter().filter(|l| l.event == "create") {
                    self.call(
                        instance,
                        node,
                        &token,
                        &listener.behaviour,
                        &listener.fields,
                        Some("create"),
                    )
                    .await
                    .map_err(|e| runtime(instance, &node.id, e.to_string()))?;
                }
                self.wait(
                    process,
                    instance,
                    &token,
                    vec![(node.id.clone(), Event::UserTask, Effect::Complete)],
                )
            }
            other => Err(runtime(
                instance,
                &node.id,
                format!("{other:?} is not executed by this engine"),
            )),
        }
    }

    /// Calls a bound handler with the token's visible variables and writes back what it set.
    pub(super) async fn call(
        &self,
        instance: &mut Instance,
        node: &Node,
        token: &Token,
        behaviour: &Behaviour,
        fields: &[Field],
        listener_event: Option<&str>,
    ) -> std::result::Result<(), HandlerError> {
        let name = behaviour.text();
        let handler = self
            .registry
            .get(name)
            .ok_or_else(|| HandlerError::Failed(format!("no handler bound to '{name}'")))?;
        let visible = instance.visible(token.scope);
        let mut values = Map::new();
        for field in fields {
            let value = match &field.value {
                FieldValue::String(s) => Value::String(s.clone()),
                FieldValue::Expression(text) => self
                    .expression(text)
                    .and_then(|expression| expression.evaluate(&visible))
                    .map_err(|e| HandlerError::Failed(e.to_string()))?,
            };
            values.insert(field.name.clone(), value);
        }
        let mut context = HandlerContext {
            process_id: &instance.process_id,
            instance_id: &instance.id,
            business_key: instance.business_key.as_deref(),
            element_id: &node.id,
            listener_event,
            fields: &values,
            visible: &visible,
            writes: Vec::new(),
        };
        let result = handler.execute(&mut context).await;
        let writes = std::mem::take(&mut context.writes);
        for (name, value, local) in writes {
            instance.set_variable(token.scope, &name, value, local);
        }
        result
    }

    pub(super) async fn listeners(
        &self,
        instance: &mut Instance,
        node: &Node,
        token: &Token,
        event: &str,
    ) -> Result<()> {
        for listener in node.execution_listeners.iter().filter(|l| l.event == event) {
            self.call(
                instance,
                node,
                token,
                &listener.behaviour,
                &listener.fields,
                Some(event),
            )
            .await
            .map_err(|e| runtime(instance, &node.id, format!("{event} listener: {e}")))?;
        }
        Ok(())
    }

    pub(super) fn handler_failed(
        &self,
        instance: &mut Instance,
        node: &Node,
        token: &Token,
        job: Option<(Option<u32>, i64)>,
        reason: String,
    ) -> Result<()> {
        if let Some((Some(retries_left), interval)) = job {
            if retries_left > 0 {
                if let Some(t) = instance.token_mut(token.id) {
                    t.state = TokenState::Job {
                        due: self.clock.now() + interval,
                        retries_left: Some(retries_left - 1),
                        interval,
                    };
                }
                return Ok(());
            }
        }
        instance.state = InstanceState::Failed {
            element: node.id.clone(),
            reason,
        };
        Ok(())
    }
}
