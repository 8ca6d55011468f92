//! `demo` and `emulate`: the embedded defaults, in-tree emulators on loopback.

use crate::cli::{DemoArgs, EmulateCommand};

pub async fn run(_args: DemoArgs) -> u8 {
    eprintln!("error: demo is not available in this build");
    2
}

pub async fn emulate(_which: EmulateCommand) -> u8 {
    eprintln!("error: emulators are not available in this build");
    2
}
