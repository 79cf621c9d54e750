//! The BPMN engine without FHIR: parse a process, bind its service task to a Rust handler by
//! the name the file uses, and run an instance until it ends. The same engine runs DSF
//! plugins inside the BPE, which adds Tasks and persistence around it.
//!
//! `cargo run -p dsf-examples --example bpmn_alone`

use dsf_bpmn::engine::{
    Engine, HandlerContext, HandlerError, InstanceState, Registry, Step, SystemClock,
};
use dsf_examples::BoxError;
use serde_json::{json, Map};
use std::sync::Arc;

const ORDER: &str = r#"<?xml version="1.0" encoding="UTF-8"?>
<bpmn:definitions xmlns:bpmn="http://www.omg.org/spec/BPMN/20100524/MODEL"
    xmlns:camunda="http://camunda.org/schema/1.0/bpmn" id="order" targetNamespace="http://example.org">
  <bpmn:process id="exampleorg_order" isExecutable="true" camunda:versionTag="1.0">
    <bpmn:startEvent id="Start" />
    <bpmn:sequenceFlow id="toCheck" sourceRef="Start" targetRef="Check" />
    <bpmn:serviceTask id="Check" camunda:class="org.example.CheckStock" />
    <bpmn:sequenceFlow id="toDecide" sourceRef="Check" targetRef="InStock" />
    <bpmn:exclusiveGateway id="InStock" default="toBackorder" />
    <bpmn:sequenceFlow id="toShip" sourceRef="InStock" targetRef="Shipped">
      <bpmn:conditionExpression>${available &gt;= quantity}</bpmn:conditionExpression>
    </bpmn:sequenceFlow>
    <bpmn:sequenceFlow id="toBackorder" sourceRef="InStock" targetRef="Backordered" />
    <bpmn:endEvent id="Shipped" />
    <bpmn:endEvent id="Backordered" />
  </bpmn:process>
</bpmn:definitions>"#;

/// The handler bound to `org.example.CheckStock`: reads `item`, sets `available`.
fn check_stock(context: &mut HandlerContext<'_>) -> Result<(), HandlerError> {
    let available = match context.variable_str("item") {
        Some("bolts") => 500,
        Some(_) => 0,
        None => return Err(HandlerError::Failed("no item to check".into())),
    };
    context.set("available", json!(available));
    Ok(())
}

async fn order(engine: &Engine, item: &str, quantity: i64) -> Result<String, BoxError> {
    let mut variables = Map::new();
    variables.insert("item".into(), json!(item));
    variables.insert("quantity".into(), json!(quantity));
    let mut instance = engine.start("exampleorg_order", Some(item), variables)?;
    // `run` steps until the instance waits or ends; a BPE saves the instance in between.
    let step = engine.run(&mut instance).await?;
    if step != Step::Finished || instance.state != InstanceState::Completed {
        return Err(format!("order of {item} did not complete: {:?}", instance.state).into());
    }
    let ended_at = instance
        .path
        .last()
        .cloned()
        .ok_or("a finished instance passed some element")?;
    Ok(ended_at)
}

async fn run() -> Result<(), BoxError> {
    let definitions = dsf_bpmn::parse(ORDER.as_bytes(), "order.bpmn")?;
    let mut registry = Registry::new();
    registry.bind_fn("org.example.CheckStock", check_stock);
    // Deploying checks that every handler the file names is bound and every expression parses.
    let engine = Engine::deploy(definitions, registry, Arc::new(SystemClock))?;

    let bolts = order(&engine, "bolts", 20).await?;
    let nuts = order(&engine, "nuts", 20).await?;
    println!("20 bolts: {bolts}; 20 nuts: {nuts}");
    assert_eq!((bolts.as_str(), nuts.as_str()), ("Shipped", "Backordered"));
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    run().await
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn runs() {
        super::run().await.expect("the example runs");
    }
}
