//! The admin commands of the `kasm` binary (`handlers`, `handler`, `deploy`, `rollback`,
//! `pause`, `resume`) against a host running in process, as an operator runs them.

use std::process::Command;

use kasm_host::config::{Config, KafkaEnv, Secret};
use kasm_host::runtime::sha256_hex;
use kasm_tests::broker::TestBroker;
use kasm_tests::hostproc::http_request;
use kasm_tests::{KAFKA_TEST_PROPS, component, component_bytes, kasm_bin, unique, write_config};

const TOKEN: &str = "cli-token-9d41e7";

/// What one `kasm` run printed.
struct Run {
    code: i32,
    out: String,
    err: String,
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.out, self.err
        )
    }
}

/// Run `kasm <args>` with a clean admin environment plus `env`, off the runtime's threads (the
/// host under test serves on them). The token must never appear in what it prints.
/// `KASM_TEST_ECHO=1` shows every run.
async fn kasm<S: AsRef<std::ffi::OsStr>>(args: &[S], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(kasm_bin());
    cmd.args(args)
        .env_remove("KASM_ADMIN_URL")
        .env_remove("KASM_ADMIN_TOKEN");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("run kasm"))
        .await
        .unwrap();
    let run = Run {
        code: out.status.code().unwrap_or(-1),
        out: String::from_utf8_lossy(&out.stdout).into_owned(),
        err: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    if std::env::var("KASM_TEST_ECHO").is_ok() {
        eprintln!("[kasm {:?}] {run}", out.status);
    }
    assert!(
        !run.out.contains(TOKEN) && !run.err.contains(TOKEN),
        "the token was printed: {run}"
    );
    run
}

fn active_sha(addr: &str) -> serde_json::Value {
    let (code, body) = http_request(addr, "GET", "/v1/handlers/pub", Some(TOKEN), b"");
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["active_version"]["sha256"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_deploy_roll_back_and_pause_handlers_from_the_command_line() {
    let broker = TestBroker::from_env();
    let dir = tempfile::tempdir().unwrap();
    let (topic, out) = (unique("in"), unique("out"));
    broker.create_topic(&topic, 2).await;
    broker.create_topic(&out, 2).await;
    broker.create_topic(&format!("{topic}.dlq"), 1).await;
    let body = format!(
        "[kafka]\n{k}\n[handlers.pub]\ncomponent = \"{c}\"\ntopics = [\"{topic}\"]\n\
         group_id = \"{g}\"\ngrants = {{ producer = [\"{out}\"] }}\n",
        k = KAFKA_TEST_PROPS,
        c = component(kasm_tests::components::FIXTURE_PUBLISHER).display(),
        g = unique("group"),
    );
    let config = Config::load(&write_config(dir.path(), &body)).unwrap();
    let env = KafkaEnv {
        bootstrap_servers: Some(broker.bootstrap()),
        ..KafkaEnv::default()
    };
    let host = kasm_host::app::start_with(&config, &env, Some(Secret::new(TOKEN)))
        .await
        .unwrap();
    let addr = host.admin_addr.to_string();
    let url = format!("http://{addr}");
    let admin = ["--admin", url.as_str(), "--token", TOKEN];
    let with = |cmd: &[&str]| -> Vec<String> {
        cmd.iter()
            .chain(admin.iter())
            .map(|s| (*s).to_owned())
            .collect()
    };
    let v1 = sha256_hex(&component_bytes(kasm_tests::components::FIXTURE_PUBLISHER));
    let v2 = sha256_hex(&component_bytes(
        kasm_tests::components::FIXTURE_PUBLISHER_V2,
    ));
    let v2_path = component(kasm_tests::components::FIXTURE_PUBLISHER_V2)
        .display()
        .to_string();
    let other_path = component(kasm_tests::components::OTHER_WORLD)
        .display()
        .to_string();

    // The table.
    let r = kasm(&with(&["handlers"]), &[]).await;
    assert_eq!(r.code, 0, "{r}");
    let row = r
        .out
        .lines()
        .find(|l| l.starts_with("pub "))
        .unwrap_or_else(|| panic!("no row for `pub`: {r}"));
    assert!(row.contains("running") && row.contains(&v1[..12]), "{r}");
    assert!(r.out.starts_with("NAME"), "{r}");

    // --json is the server's JSON; the token may come from the environment.
    let r = kasm(
        &["handlers", "--json", "--admin", &url],
        &[("KASM_ADMIN_TOKEN", TOKEN)],
    )
    .await;
    assert_eq!(r.code, 0, "{r}");
    let list: serde_json::Value = serde_json::from_str(&r.out)
        .unwrap_or_else(|e| panic!("--json output is not JSON ({e}): {r}"));
    assert_eq!(list[0]["name"], "pub", "{r}");
    assert_eq!(list[0]["active_version"]["sha256"], v1.as_str(), "{r}");

    // Deploy v2: the new hash and the previous one are printed, and the host runs v2.
    let r = kasm(&with(&["deploy", "pub", &v2_path]), &[]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.out.contains(&format!("active     {v2}")), "{r}");
    assert!(r.out.contains(&format!("previous   {v1}")), "{r}");
    assert!(r.out.contains(" ms") && r.out.contains(" µs"), "{r}");
    assert_eq!(active_sha(&addr), v2.as_str());

    // A component of another world is refused: exit 2, the server's reason, v2 keeps serving.
    let r = kasm(&with(&["deploy", "pub", &other_path]), &[]).await;
    assert_eq!(r.code, 2, "{r}");
    assert!(r.err.contains("another world"), "{r}");
    assert!(r.err.contains("active version keeps serving"), "{r}");
    assert_eq!(active_sha(&addr), v2.as_str());
    // ... and with --json the server's error answer is printed for scripts.
    let r = kasm(&with(&["deploy", "pub", &other_path, "--json"]), &[]).await;
    assert_eq!(r.code, 2, "{r}");
    let answer: serde_json::Value =
        serde_json::from_str(&r.out).unwrap_or_else(|e| panic!("{e}: {r}"));
    assert!(
        answer["error"]
            .as_str()
            .is_some_and(|e| e.contains("another world")),
        "{r}"
    );

    // The detail view shows the deploy in the history.
    let r = kasm(&with(&["handler", "pub"]), &[]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.out.contains("handler    pub (running)"), "{r}");
    assert!(r.out.contains(&format!("version    {v2}")), "{r}");
    assert!(
        r.out.contains(&format!("{} → {}", &v1[..12], &v2[..12])),
        "{r}"
    );
    assert!(r.out.contains("startup") && r.out.contains("deploy"), "{r}");

    // Rollback restores v1.
    let r = kasm(&with(&["rollback", "pub"]), &[]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.out.contains(&format!("active     {v1}")), "{r}");
    assert_eq!(active_sha(&addr), v1.as_str());

    // Pause and resume, with the status shown.
    let r = kasm(&with(&["pause", "pub"]), &[]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.out.contains("pub  paused"), "{r}");
    assert!(
        host.handlers[0]
            .paused
            .load(std::sync::atomic::Ordering::SeqCst)
    );
    let r = kasm(&with(&["handlers"]), &[]).await;
    assert!(
        r.out
            .lines()
            .any(|l| l.starts_with("pub ") && l.contains("paused")),
        "{r}"
    );
    let r = kasm(&with(&["resume", "pub"]), &[]).await;
    assert_eq!(r.code, 0, "{r}");
    assert!(r.out.contains("pub  running"), "{r}");
    assert!(
        !host.handlers[0]
            .paused
            .load(std::sync::atomic::Ordering::SeqCst)
    );

    // A wrong or missing token: exit 2 and what to do about it; nothing changes.
    for args in [
        vec!["pause", "pub", "--admin", &url, "--token", "wrong-token"],
        vec!["handlers", "--admin", &url],
    ] {
        let r = kasm(&args, &[]).await;
        assert_eq!(r.code, 2, "{r}");
        assert!(
            r.err
                .contains("the admin token is missing or wrong (set KASM_ADMIN_TOKEN or --token)"),
            "{r}"
        );
    }
    assert!(
        !host.handlers[0]
            .paused
            .load(std::sync::atomic::Ordering::SeqCst)
    );

    // An unknown handler: the server's message.
    let r = kasm(&with(&["rollback", "nope"]), &[]).await;
    assert_eq!(r.code, 2, "{r}");
    assert!(r.err.contains("no handler named `nope`"), "{r}");
    host.shutdown().await.unwrap();

    // Nobody listening: the URL is named.
    let r = kasm(&with(&["handlers"]), &[]).await;
    assert_eq!(r.code, 2, "{r}");
    assert!(
        r.err.contains(&url) && r.err.contains("connection refused"),
        "{r}"
    );
}
