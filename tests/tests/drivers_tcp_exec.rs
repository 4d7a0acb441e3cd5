//! The TCP probe and the exec driver against real programs: a probe of the
//! node exporter's port with a real HTTP exchange, a refused port, and
//! programs run without a shell, with a clean environment, a timeout, and
//! output that does (or does not) parse.

use std::time::{Duration, Instant};

use anyhow::Result;
use tributary_agent::reading::{FailureKind, Value};
use tributary_tests::peers::{self, device_config, poll_once, value_of};
use tributary_tests::process::{TestDir, free_addr};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_probe_connects_sends_and_expects() -> Result<()> {
    let dir = TestDir::new("tcp-probe")?;
    let exporter = peers::node_exporter(&dir, None).await?;
    let addr = exporter.addr;
    let plain = device_config(
        "web",
        &format!("driver = \"tcp\"\ninterval = \"1s\"\naddress = \"{addr}\"\n"),
    )?;
    let samples = poll_once(&plain)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(matches!(value_of(&samples, "connect_seconds"), Some(Value::F64(s)) if *s >= 0.0));

    let http = |expect: &str| {
        device_config(
            "web",
            &format!(
                "driver = \"tcp\"\ninterval = \"1s\"\ntimeout = \"3s\"\naddress = \"{addr}\"\n\
                 send = \"GET /metrics HTTP/1.0\\r\\n\\r\\n\"\nexpect = \"{expect}\"\n"
            ),
        )
    };
    let samples = poll_once(&http("node_exporter_build_info")?)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    assert!(matches!(value_of(&samples, "response_seconds"), Some(Value::F64(s)) if *s >= 0.0));
    let e = poll_once(&http("SSH-2.0")?).await.expect_err("not ssh");
    assert!(
        e.message.contains("expected \"SSH-2.0\" in the reply"),
        "{e}"
    );
    assert!(
        e.message.contains("HTTP/1.0 200 OK"),
        "shows what came back: {e}"
    );

    let closed = free_addr()?;
    let dev = device_config(
        "gone",
        &format!("driver = \"tcp\"\ninterval = \"1s\"\naddress = \"{closed}\"\n"),
    )?;
    let e = poll_once(&dev).await.expect_err("refused");
    assert_eq!(e.message, format!("connection refused to {closed}"));
    Ok(())
}

fn exec(body: &str) -> Result<tributary_agent::config::DeviceConfig> {
    device_config(
        "script",
        &format!("driver = \"exec\"\ninterval = \"1s\"\ntimeout = \"2s\"\n{body}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_runs_programs_without_a_shell() -> Result<()> {
    // Arguments are passed as they are: no shell expands `$HOME` or `*`.
    let dev = exec(
        "command = \"/usr/bin/printf\"\nargs = ['{\"arg\": \"%s\", \"n\": 5}', '$HOME *']\n\
         metrics = [{ name = \"arg\", pointer = \"/arg\" }, { name = \"n\", pointer = \"/n\" }]\n",
    )?;
    let samples = poll_once(&dev).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(
        value_of(&samples, "arg"),
        Some(&Value::Str("$HOME *".into()))
    );
    assert_eq!(value_of(&samples, "n"), Some(&Value::I64(5)));

    // The environment is exactly `env`.
    let dev = exec("command = \"/usr/bin/env\"\nenv = { A = \"1\" }\nformat = \"prometheus\"\n")?;
    let e = poll_once(&dev)
        .await
        .expect_err("`A=1` is not prometheus text");
    assert!(e.message.contains("line 1"), "{e}");
    let dev = exec(
        "command = \"/usr/bin/python3\"\nargs = [\"-c\", \"import os, json; print(json.dumps({'keys': ' '.join(sorted(os.environ))}))\"]\n\
         env = { ONLY = \"x\", LC_ALL = \"C.UTF-8\" }\nmetrics = [{ name = \"keys\", pointer = \"/keys\" }]\n",
    )?;
    let samples = poll_once(&dev).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    // (LC_ALL keeps Python from adding LC_CTYPE itself.)
    assert_eq!(
        value_of(&samples, "keys"),
        Some(&Value::Str("LC_ALL ONLY".into()))
    );

    // Prometheus text from a real program.
    let dev = exec("command = \"/bin/echo\"\nargs = [\"load 0.5\"]\nformat = \"prometheus\"\n")?;
    let samples = poll_once(&dev).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    assert_eq!(value_of(&samples, "load"), Some(&Value::F64(0.5)));

    // Failures: exit status with stderr, missing program, timeout.
    let dev = exec(
        "command = \"/usr/bin/python3\"\nargs = [\"-c\", \"import sys; sys.exit('sensor offline')\"]\nmetrics = [{ name = \"v\", pointer = \"/v\" }]\n",
    )?;
    let e = poll_once(&dev).await.expect_err("exit 1");
    assert_eq!(
        e.message,
        "/usr/bin/python3 exited with status 1: sensor offline"
    );
    let dev =
        exec("command = \"/nonexistent/probe\"\nmetrics = [{ name = \"v\", pointer = \"/v\" }]\n")?;
    let e = poll_once(&dev).await.expect_err("missing");
    assert_eq!(
        e.message,
        "cannot run /nonexistent/probe: program not found"
    );
    let dev = exec(
        "command = \"/bin/sleep\"\nargs = [\"30\"]\nmetrics = [{ name = \"v\", pointer = \"/v\" }]\n",
    )?;
    let start = Instant::now();
    let e = poll_once(&dev).await.expect_err("timeout");
    assert_eq!(e.kind, FailureKind::Timeout);
    assert!(
        start.elapsed() < Duration::from_secs(20),
        "the child was killed"
    );
    Ok(())
}
