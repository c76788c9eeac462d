//! Criterion benchmark: compiling the paper's synthesis recipe (and its inversion variant) with
//! bound variables against the paper's lab descriptor. Target: under 100 µs per compile.

use criterion::{criterion_group, criterion_main, Criterion};
use maosic_schema::capability::LabDescriptor;
use maosic_schema::lang::{self, Bindings};
use std::hint::black_box;

fn bench(c: &mut Criterion) {
    let Ok(lab) = LabDescriptor::from_toml_str(include_str!("../../examples/paper-lab.toml"))
    else {
        panic!("examples/paper-lab.toml must load");
    };
    let chirality = include_str!("../../examples/chirality.recipe");
    let inversion = include_str!("../../examples/inversion.recipe");
    let vars: Bindings = [("T".to_string(), 130.0), ("C".to_string(), 0.8)].into();
    c.bench_function("compile chirality.recipe (T=130, C=0.8)", |b| {
        b.iter(|| lang::compile(black_box(chirality), &lab, black_box(&vars)))
    });
    c.bench_function("compile inversion.recipe (T=130, C=0.8)", |b| {
        b.iter(|| lang::compile(black_box(inversion), &lab, black_box(&vars)))
    });
    c.bench_function("check chirality.recipe (unbound: range corners)", |b| {
        b.iter(|| lang::check(black_box(chirality), &lab, &Bindings::new()))
    });
    c.bench_function("format chirality.recipe", |b| {
        b.iter(|| lang::format(black_box(chirality)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
