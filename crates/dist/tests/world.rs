//! World::from_vars on torchrun's variables: good layouts, the single-process cases and each bad variable.

use std::collections::HashMap;

use olive_dist::{free_port, DistError, World, VARIABLES};

fn vars(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
    let map: HashMap<String, String> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    move |name| map.get(name).cloned()
}

fn good() -> Vec<(&'static str, &'static str)> {
    vec![
        ("RANK", "3"),
        ("LOCAL_RANK", "1"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_WORLD_SIZE", "2"),
        ("MASTER_ADDR", "10.0.0.7"),
        ("MASTER_PORT", "29500"),
    ]
}

fn with(name: &str, value: Option<&'static str>) -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<_> = good().into_iter().filter(|(k, _)| *k != name).collect();
    if let Some(value) = value {
        let key = VARIABLES
            .iter()
            .find(|k| **k == name)
            .expect("a variable of VARIABLES");
        v.push((key, value));
    }
    v
}

#[test]
fn reads_a_full_layout_and_writes_it_back() {
    let world = World::from_vars(vars(&good()))
        .expect("valid layout")
        .expect("a group");
    assert_eq!(
        world,
        World {
            rank: 3,
            local_rank: 1,
            world_size: 4,
            local_world_size: 2,
            master_addr: "10.0.0.7".into(),
            master_port: 29500,
        }
    );
    assert!(!world.is_leader());
    let env = world.env();
    let names: Vec<&str> = env.iter().map(|(k, _)| *k).collect();
    assert_eq!(names, VARIABLES);
    let back =
        World::from_vars(|name| env.iter().find(|(k, _)| *k == name).map(|(_, v)| v.clone()))
            .expect("valid")
            .expect("a group");
    assert_eq!(back, world);
    assert_eq!(world.master(), "10.0.0.7:29500");
}

#[test]
fn no_world_size_or_a_lone_process_is_not_a_group() {
    assert_eq!(World::from_vars(vars(&[])).expect("valid"), None);
    assert_eq!(
        World::from_vars(vars(&[("RANK", "0"), ("MASTER_PORT", "1")])).expect("valid"),
        None
    );
    assert_eq!(
        World::from_vars(vars(&[("WORLD_SIZE", "1")])).expect("valid"),
        None
    );
    let one = World::from_vars(vars(&[
        ("RANK", "0"),
        ("LOCAL_RANK", "0"),
        ("WORLD_SIZE", "1"),
        ("LOCAL_WORLD_SIZE", "1"),
        ("MASTER_ADDR", "127.0.0.1"),
        ("MASTER_PORT", "1234"),
    ]))
    .expect("valid")
    .expect("a group of one");
    assert!(one.is_leader());
}

fn bad(pairs: Vec<(&'static str, &'static str)>) -> DistError {
    match World::from_vars(vars(&pairs)) {
        Err(e) => e,
        Ok(w) => panic!("{pairs:?} accepted as {w:?}"),
    }
}

fn assert_bad(pairs: Vec<(&'static str, &'static str)>, variable: &str, value: &str) {
    match bad(pairs) {
        DistError::BadVariable { name, value: v, .. } => {
            assert_eq!((name, v.as_str()), (variable, value));
        }
        other => panic!("expected a bad {variable}, got {other}"),
    }
}

#[test]
fn each_bad_variable_is_named() {
    assert_bad(with("WORLD_SIZE", Some("two")), "WORLD_SIZE", "two");
    assert_bad(with("WORLD_SIZE", Some("0")), "WORLD_SIZE", "0");
    assert_bad(with("RANK", Some("-1")), "RANK", "-1");
    assert_bad(with("RANK", Some("4")), "RANK", "4");
    assert_bad(with("LOCAL_RANK", Some("2")), "LOCAL_RANK", "2");
    assert_bad(with("LOCAL_RANK", Some("x")), "LOCAL_RANK", "x");
    assert_bad(with("LOCAL_WORLD_SIZE", Some("0")), "LOCAL_WORLD_SIZE", "0");
    assert_bad(with("LOCAL_WORLD_SIZE", Some("8")), "LOCAL_WORLD_SIZE", "8");
    assert_bad(with("MASTER_PORT", Some("70000")), "MASTER_PORT", "70000");
    assert_bad(with("MASTER_PORT", Some("0")), "MASTER_PORT", "0");
    assert_bad(with("MASTER_PORT", Some("http")), "MASTER_PORT", "http");
    assert_bad(with("MASTER_ADDR", Some("  ")), "MASTER_ADDR", "");
    let e = bad(with("RANK", Some("4")));
    assert!(
        e.to_string()
            .contains("RANK=\"4\": expected less than WORLD_SIZE=4"),
        "{e}"
    );
}

#[test]
fn each_missing_variable_is_named() {
    for name in VARIABLES.iter().filter(|n| **n != "WORLD_SIZE") {
        match bad(with(name, None)) {
            DistError::MissingVariable { name: missing, .. } => assert_eq!(missing, *name),
            other => panic!("expected {name} missing, got {other}"),
        }
    }
}

#[test]
fn free_port_is_bindable() {
    let port = free_port().expect("a free port");
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).expect("the port is free");
}
