// bpmn-engine side of dsf-bpmn's engine comparison: node bench.js <file> <chain|fanout|message|parse> <seconds>
// Prints {"per_second": n}. The BPMN is parsed once (moddle context) and reused, except for "parse".
'use strict';
const fs = require('fs');
const { Engine } = require('bpmn-engine');
const BpmnModdle = require('bpmn-moddle');

async function main() {
  const [file, scenario, seconds] = process.argv.slice(2);
  const source = fs.readFileSync(file, 'utf8');
  const moddle = new BpmnModdle();
  const deadline = Date.now() + Number(seconds) * 1000;
  let count = 0;
  if (scenario === 'parse') {
    while (Date.now() < deadline) {
      await new BpmnModdle().fromXML(source);
      count++;
    }
  } else {
    const moddleContext = await moddle.fromXML(source);
    while (Date.now() < deadline) {
      const engine = new Engine({
        name: 'p',
        moddleContext,
        services: { noop: (_context, next) => next() },
      });
      await new Promise((resolve, reject) => {
        const listener = new (require('events').EventEmitter)();
        listener.on('wait', (api) => {
          if (api.content.type === 'bpmn:MessageEventDefinition') api.signal();
        });
        engine.once('end', resolve);
        engine.once('error', reject);
        engine.execute({ listener }).catch(reject);
      });
      count++;
    }
  }
  const elapsed = Number(seconds);
  process.stdout.write(JSON.stringify({ per_second: count / elapsed }) + '\n');
}

main().catch((e) => { console.error(e); process.exit(1); });
