//! Upload intents: recorded before an upload's first byte is sent and
//! dropped once a map names the object, so that a crash never leaves an
//! object that garbage collection cannot attribute.
use super::{durable, StateDir};
use crate::key::ObjectId;
use crate::names::ObjectName;
use serde::{Deserialize, Serialize};
use std::io;
use std::path::PathBuf;

/// An upload in progress.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Intent {
    /// Object name relative to the store's prefix.
    pub name: String,
    /// The uploading process, and the start time of the server it ran in:
    /// together they tell whether the upload may still be running.
    pub pid: i32,
    pub boot: i64,
}

fn file_name(id: ObjectId) -> String {
    format!("{id}.json")
}

impl StateDir {
    pub fn add_intent(&self, name: &ObjectName, pid: i32, boot: i64) -> io::Result<()> {
        let i = Intent {
            name: name.relative(),
            pid,
            boot,
        };
        durable::write(
            &self.intents_dir(),
            &file_name(name.object_id),
            &serde_json::to_vec(&i).expect("serialising an intent"),
        )
    }

    pub fn drop_intent(&self, id: ObjectId) -> io::Result<()> {
        durable::remove(&self.intents_dir(), &file_name(id))
    }

    /// Every readable intent with its file (an unreadable one names no object).
    pub fn intents(&self) -> Vec<(PathBuf, Intent)> {
        durable::read_json_dir(&self.intents_dir())
            .into_iter()
            .filter_map(|(p, i)| Some((p, i.ok()?)))
            .collect()
    }
}
