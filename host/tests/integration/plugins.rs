//! `olive-host plugins list|manifest`: discovery from manifests, broken plugins listed with why.

use std::env::consts::{DLL_PREFIX, DLL_SUFFIX};
use std::fs;

use crate::support::{
    checked_in_manifest, library, olive, olive_with_path, plugin_dir, s, stage, FIXTURES,
};

#[test]
fn list_shows_each_plugin_with_its_file_version_and_passes() {
    let run = olive(&["plugins", "list"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let dir = plugin_dir().display();
    let copy = format!(
        "fixture-copy 0.1.0  {dir}/{DLL_PREFIX}fixture_copy{DLL_SUFFIX}\n  CopyModel 1.0.0  hf, onnx -> hf, onnx  [cpu]  Copies the input model to the output folder.\n"
    );
    assert!(run.stdout.contains(&copy), "{}", run.stdout);
    assert!(run.stdout.contains(
        "  Segfault 1.0.0  hf -> hf  [cpu]  Writes a file, then writes through a bad pointer.\n"
    ));
    assert!(run.stdout.contains(&format!(
        "fixture-no-symbol 0.1.0  {dir}/{DLL_PREFIX}fixture_no_symbol{DLL_SUFFIX}\n"
    )));
    let broken = format!(
        "\nbroken:\n  plugin `fixture-wrong-api` ({dir}/fixture_wrong_api.olive-plugin.json) was built for plugin api 99.0, and this olive-host speaks 1.1\n"
    );
    assert!(run.stdout.ends_with(&broken), "{}", run.stdout);
}

#[test]
fn list_as_json() {
    let run = olive(&["plugins", "list", "--json"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let names: Vec<_> = json["plugins"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["fixture-broken", "fixture-copy", "fixture-no-symbol"]
    );
    let copy = &json["plugins"][1];
    assert_eq!(copy["api_version"], "1.1");
    assert_eq!(
        copy["passes"][0]["config_schema"]["additionalProperties"],
        false
    );
    assert_eq!(
        json["broken"][0]["manifest"],
        s(&plugin_dir().join("fixture_wrong_api.olive-plugin.json"))
    );
}

#[test]
fn list_reports_bad_manifests_and_shadowed_plugins_and_still_lists_the_rest() {
    let extra = tempfile::tempdir().unwrap();
    fs::write(
        extra.path().join("bad.olive-plugin.json"),
        "{\"name\": \"bad\",",
    )
    .unwrap();
    let ghost = fs::read_to_string(checked_in_manifest("fixture-copy", "fixture_copy"))
        .unwrap()
        .replace("\"fixture-copy\"", "\"ghost\"")
        .replace("\"fixture_copy\"", "\"ghost\"");
    fs::write(extra.path().join("ghost.olive-plugin.json"), ghost).unwrap();
    stage(extra.path(), "fixture-copy", "fixture_copy", |_| {});
    let path = std::env::join_paths([extra.path(), plugin_dir()]).unwrap();

    let run = olive_with_path(&path, &["plugins", "list"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let (extra, dir) = (extra.path().display(), plugin_dir().display());
    assert!(run.stdout.starts_with(&format!(
        "fixture-copy 0.1.0  {extra}/{DLL_PREFIX}fixture_copy{DLL_SUFFIX}\n"
    )));
    let tail = format!(
        "\nshadowed by an earlier plugin of the same name:\n  fixture-copy 0.1.0  {dir}/{DLL_PREFIX}fixture_copy{DLL_SUFFIX}\n\
         \nbroken:\n  plugin manifest {extra}/bad.olive-plugin.json: not a valid plugin manifest: EOF while parsing a value at line 1 column 15\n  \
         plugin `ghost` ({extra}/ghost.olive-plugin.json): its library {extra}/{DLL_PREFIX}ghost{DLL_SUFFIX} does not exist\n  \
         plugin `fixture-wrong-api` ({dir}/fixture_wrong_api.olive-plugin.json) was built for plugin api 99.0, and this olive-host speaks 1.1\n"
    );
    assert!(run.stdout.ends_with(&tail), "{}", run.stdout);
}

#[test]
fn list_says_where_it_looked_when_there_are_no_plugins() {
    let empty = tempfile::tempdir().unwrap();
    let run = olive_with_path(empty.path().as_os_str(), &["plugins", "list"]);
    assert_eq!(run.code, Some(0), "{}", run.stderr);
    let expected = format!("no plugins found (searched {}, ", empty.path().display());
    assert!(run.stdout.starts_with(&expected), "{}", run.stdout);
    assert!(
        run.stdout
            .ends_with("; add folders with OLIVE_PLUGIN_PATH)\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn manifest_writes_what_is_checked_in() {
    for (package, lib) in FIXTURES
        .into_iter()
        .filter(|(p, _)| ["fixture-copy", "fixture-broken"].contains(p))
    {
        let out = tempfile::tempdir().unwrap();
        let run = olive(&[
            "plugins",
            "manifest",
            s(&library(lib)),
            "--output_dir",
            s(out.path()),
        ]);
        assert_eq!(run.code, Some(0), "{}", run.stderr);
        let written = out.path().join(format!("{lib}.olive-plugin.json"));
        assert_eq!(run.stdout.trim_end(), s(&written));
        let checked_in = checked_in_manifest(package, lib);
        assert_eq!(
            fs::read_to_string(&written).unwrap(),
            fs::read_to_string(&checked_in).unwrap(),
            "{} is stale: regenerate it with `olive-host plugins manifest {} --output_dir {}`",
            checked_in.display(),
            library(lib).display(),
            checked_in.parent().unwrap().display()
        );
    }
}

#[test]
fn manifest_refuses_libraries_that_are_not_plugins_for_this_host() {
    let out = tempfile::tempdir().unwrap();
    let no_symbol = library("fixture_no_symbol");
    olive(&["plugins", "manifest", s(&no_symbol), "--output_dir", s(out.path())]).assert_error(&format!(
        "cannot load {}: it is not an olive plugin: it does not export the plugin root module (symbol `_1as_0lib_1header_0root_bmodule_bloader`)",
        no_symbol.display()
    ));
    let wrong_api = library("fixture_wrong_api");
    olive(&[
        "plugins",
        "manifest",
        s(&wrong_api),
        "--output_dir",
        s(out.path()),
    ])
    .assert_error(&format!(
        "cannot load {}: it was built for plugin api 99.0, and this olive-host speaks 1.1",
        wrong_api.display()
    ));
    let missing = out.path().join("libnothing.so");
    let run = olive(&["plugins", "manifest", s(&missing)]);
    assert!(run.error().starts_with(&format!(
        "cannot load {}: not a loadable library: ",
        missing.display()
    )));
    assert!(
        fs::read_dir(out.path()).unwrap().next().is_none(),
        "nothing is written on failure"
    );
}
