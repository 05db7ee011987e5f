//! Test fixture: passes that fail in every way a vendor's pass can — a panic, a segfault, an abort,
//! an exit, a pass that runs until cancelled, and one that ignores cancellation.

use std::time::Duration;

use olive_pass_sdk::{kinds, Context, Error, Model, Pass};
use schemars::JsonSchema;
use serde::Deserialize;

/// The (empty) config of every broken pass.
#[derive(Debug, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NoConfig {}

macro_rules! broken_pass {
    ($ty:ident, $description:literal, |$ctx:ident| $body:expr) => {
        #[doc = $description]
        pub struct $ty;

        impl Pass for $ty {
            const NAME: &'static str = stringify!($ty);
            const VERSION: &'static str = "1.0.0";
            const DESCRIPTION: &'static str = $description;
            const ACCEPTS: &'static [&'static str] = &[kinds::HF];
            const PRODUCES: &'static [&'static str] = &[kinds::HF];
            const DEVICES: &'static [&'static str] = &["cpu"];
            type Config = NoConfig;

            fn run(_model: Model, _config: NoConfig, $ctx: &Context<'_>) -> Result<Model, Error> {
                $body
            }
        }
    };
}

broken_pass!(Panic, "Writes a file, then panics.", |ctx| {
    let _ = std::fs::write(ctx.output_dir().join("half-written"), b"x");
    panic!("deliberate panic in a fixture")
});

broken_pass!(
    Segfault,
    "Writes a file, then writes through a bad pointer.",
    |ctx| {
        let _ = std::fs::write(ctx.output_dir().join("half-written"), b"x");
        // An aligned, non-null address in the unmapped first page: a real memory fault.
        unsafe { std::ptr::write_volatile(std::ptr::without_provenance_mut::<u64>(0x10), 1) };
        Err(Error::Failed("survived a segfault".into()))
    }
);

broken_pass!(Abort, "Writes a file, then aborts the process.", |ctx| {
    let _ = std::fs::write(ctx.output_dir().join("half-written"), b"x");
    std::process::abort()
});

broken_pass!(
    Exit,
    "Prints to stdout, then exits the process with status 3.",
    |ctx| {
        let _ = std::fs::write(ctx.output_dir().join("half-written"), b"x");
        println!("noise on stdout");
        std::process::exit(3)
    }
);

broken_pass!(Hang, "Runs until cancelled.", |ctx| {
    let _ = std::fs::write(ctx.output_dir().join("half-written"), b"x");
    ctx.info("waiting for cancellation");
    loop {
        ctx.check_cancelled()?;
        std::thread::sleep(Duration::from_millis(10));
    }
});

broken_pass!(
    IgnoreCancel,
    "Never returns, whatever the host asks.",
    |ctx| {
        let _ = std::fs::write(ctx.output_dir().join("half-written"), b"x");
        loop {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
);

olive_pass_sdk::export_plugin! {
    name: "fixture-broken",
    version: "0.1.0",
    passes: [Panic, Segfault, Abort, Exit, Hang, IgnoreCancel],
}
