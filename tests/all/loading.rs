//! Component loading refuses what it cannot run, each refusal naming its cause, and reuses
//! precompiled artifacts.

use kasm_host::capabilities::{Grants, TopicGrant};
use kasm_host::runtime::{HandlerSpec, LoadError, LoadSource, Runtime, RuntimeConfig};
use kasm_tests::{component_bytes, runtime};

fn refuse(rt: &Runtime, bytes: &[u8], grants: Grants) -> LoadError {
    let mut spec = HandlerSpec::new("under-test");
    spec.grants = grants;
    match rt.load(bytes, spec) {
        Ok(_) => panic!("expected the component to be refused"),
        Err(e) => e,
    }
}

#[test]
fn random_bytes_are_not_wasm() {
    let rt = runtime();
    let bytes: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
    let e = refuse(&rt, &bytes, Grants::all());
    assert!(matches!(e, LoadError::NotWasm { .. }), "{e}");
    assert!(e.to_string().contains("not a WebAssembly file"), "{e}");
}

#[test]
fn a_core_module_is_not_a_component() {
    let rt = runtime();
    let module = wat::parse_str(r#"(module (func (export "handle")))"#).unwrap();
    let e = refuse(&rt, &module, Grants::all());
    assert!(matches!(e, LoadError::CoreModule), "{e}");
    assert!(
        e.to_string()
            .contains("core WebAssembly module, not a component"),
        "{e}"
    );
}

#[test]
fn a_component_of_another_world_is_refused() {
    let rt = runtime();
    let e = refuse(
        &rt,
        &component_bytes(kasm_tests::components::OTHER_WORLD),
        Grants::all(),
    );
    assert!(matches!(e, LoadError::OtherWorld { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("another world") && msg.contains("wasi:cli/run"),
        "{msg}"
    );
}

#[test]
fn an_ungranted_capability_is_refused_naming_the_import() {
    let rt = runtime();
    // The fixture imports kv; grant only producer.
    let grants = Grants {
        producer: Some(TopicGrant::Any),
        kv: false,
        sql: false,
        websocket: false,
        http: None,
    };
    let e = refuse(
        &rt,
        &component_bytes(kasm_tests::components::FIXTURE),
        grants,
    );
    assert!(matches!(e, LoadError::NotGranted { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("kasm:handler/kv@0.1.0") && msg.contains("not granted"),
        "{msg}"
    );
    assert!(msg.contains("under-test"), "names the handler: {msg}");
}

#[test]
fn a_component_over_the_size_limit_is_refused_before_compiling() {
    let rt = Runtime::new(RuntimeConfig {
        max_instances: 4,
        max_component_bytes: 1024,
        ..RuntimeConfig::default()
    })
    .unwrap();
    let e = refuse(
        &rt,
        &component_bytes(kasm_tests::components::FIXTURE),
        Grants::all(),
    );
    assert!(matches!(e, LoadError::TooLarge { limit: 1024, .. }), "{e}");
    assert!(
        e.to_string().contains("over the limit of 1024 bytes"),
        "{e}"
    );
}

#[test]
fn the_handlers_load_with_exactly_their_capabilities() {
    let rt = runtime();
    for (name, needs) in [
        (
            kasm_tests::components::NOTIFICATION,
            &["settings", "http", "log"][..],
        ),
        (kasm_tests::components::RECURRING, &["producer", "log"]),
        (kasm_tests::components::AUDIT, &["sql", "log"]),
        (kasm_tests::components::LIVE_UPDATES, &["websocket", "log"]),
        (
            kasm_tests::components::FIXTURE_PUBLISHER,
            &["producer", "log"],
        ),
    ] {
        let mut spec = HandlerSpec::new(name.name());
        spec.grants = Grants {
            producer: Some(TopicGrant::Any),
            kv: false,
            sql: true,
            websocket: true,
            http: Some(kasm_host::capabilities::HostGrant::Any),
        };
        let h = rt
            .load(&component_bytes(name), spec)
            .unwrap_or_else(|e| panic!("{}: {e}", name.name()));
        let caps: Vec<String> = h
            .info()
            .capabilities
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(caps, needs, "{} needs exactly {needs:?}", name.name());
        assert_eq!(h.info().sha256.len(), 64);
    }
}

#[test]
fn a_precompiled_artifact_is_reused_on_the_second_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = RuntimeConfig {
        max_instances: 4,
        cache_dir: Some(dir.path().to_owned()),
        ..RuntimeConfig::default()
    };
    let bytes = component_bytes(kasm_tests::components::FIXTURE_PUBLISHER);
    let spec = || {
        let mut s = HandlerSpec::new("p");
        s.grants = Grants::all();
        s
    };

    let first = Runtime::new(config.clone()).unwrap();
    let a = first.load(&bytes, spec()).unwrap();
    assert_eq!(a.load_report().source, LoadSource::Compiled);
    let artifacts: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(artifacts.len(), 1, "one artifact written");

    // A second load in the same process, and in a new engine (as after a restart), both
    // deserialize the artifact instead of compiling.
    let b = first.load(&bytes, spec()).unwrap();
    assert_eq!(b.load_report().source, LoadSource::Cache);
    let restarted = Runtime::new(config).unwrap();
    let c = restarted.load(&bytes, spec()).unwrap();
    assert_eq!(c.load_report().source, LoadSource::Cache);
    assert_eq!(a.info().sha256, c.info().sha256);

    // A corrupt artifact is discarded and the component compiled again.
    let path = first.cache().unwrap().path(&a.info().sha256);
    std::fs::write(&path, b"garbage").unwrap();
    let d = Runtime::new(RuntimeConfig {
        max_instances: 4,
        cache_dir: Some(dir.path().to_owned()),
        ..RuntimeConfig::default()
    })
    .unwrap()
    .load(&bytes, spec())
    .unwrap();
    assert_eq!(d.load_report().source, LoadSource::Compiled);
}
