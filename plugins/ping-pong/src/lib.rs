//! The DSF ping-pong process plugin on `dsf-plugin-api`: checks connectivity between
//! organisations by sending ping Tasks and answering with pong Tasks.
//!
//! Not implemented yet; it needs the plugin API and the engine.
