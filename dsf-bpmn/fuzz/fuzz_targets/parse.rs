//! Arbitrary bytes into the BPMN parser (and, when they are text, into the expression parser
//! and evaluator): errors are fine, panics and hangs are not.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = dsf_bpmn::parse(data, "fuzz.bpmn");
    if let Ok(text) = std::str::from_utf8(data) {
        if let Ok(expression) = dsf_bpmn::expr::Expression::parse(text) {
            let vars = serde_json::Map::new();
            let _ = expression.evaluate(&vars);
        }
    }
});
