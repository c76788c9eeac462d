//! Fuzz target: the instruction-language parser, checker, compiler and formatter must never panic
//! on any input, and formatting must round-trip (`parse(format(x)) == x` up to spans).
#![no_main]

use libfuzzer_sys::fuzz_target;
use maosic_schema::capability::LabDescriptor;
use maosic_schema::lang::{self, Bindings};
use std::sync::OnceLock;

fn lab() -> &'static LabDescriptor {
    static LAB: OnceLock<LabDescriptor> = OnceLock::new();
    LAB.get_or_init(|| {
        LabDescriptor::from_toml_str(include_str!("../../../examples/paper-lab.toml"))
            .expect("paper lab loads")
    })
}

fuzz_target!(|data: &[u8]| {
    // First byte picks the bindings so bound and unbound paths are both exercised.
    let (sel, rest) = data
        .split_first()
        .map(|(a, b)| (*a, b))
        .unwrap_or((0, data));
    let Ok(src) = std::str::from_utf8(rest) else {
        return;
    };
    let mut vars = Bindings::new();
    if sel & 1 == 1 {
        vars.insert("T".into(), 90.0 + f64::from(sel) * 0.35);
    }
    if sel & 2 == 2 {
        vars.insert("C".into(), 0.2 + f64::from(sel) / 255.0);
    }
    let _ = lang::check(src, lab(), &vars);
    let out = lang::compile(src, lab(), &vars);
    if let Some(p) = &out.program {
        assert!(p.validate().is_ok(), "compiled program must be well formed");
    }
    let _ = lang::render("fuzz.recipe", src, &out.diagnostics);
    if let Ok(formatted) = lang::format(src) {
        let a = lang::parse(src)
            .file
            .expect("formatted text came from a parse");
        let b = lang::parse(&formatted);
        let b = b.file.expect("formatted text must parse");
        assert_eq!(a.strip_spans(), b.strip_spans(), "format round trip");
    }
});
