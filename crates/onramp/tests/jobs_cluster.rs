//! Job notifications across the nodes of one deployment: a device connected
//! to one node hears of a job created, or canceled, through another node's
//! API (the message goes through the database's outbox), once.

mod support;

use serde_json::{Value, json};
use support::*;

#[test]
fn a_job_created_on_one_node_notifies_a_device_connected_to_another() {
    let a = Server::start(Backend::Postgres);
    let d1 = a.device("D1");
    let key = a.api_key("operator");
    let b = a.another_node();
    let sub = b.mosquitto_sub(
        &d1,
        "D1",
        &[
            "-t",
            "$aws/things/D1/jobs/notify-next",
            "-q",
            "1",
            "-C",
            "2",
            "-W",
            "20",
        ],
    );
    settle();
    let body = json!({"jobId": "cluster-1", "document": {"op": "reboot"}, "targets": ["D1"]});
    let r = a.api("POST", "/api/v1/jobs", &key, Some(&body.to_string()));
    assert_eq!(r.status, 201, "{}", r.text());
    let first = sub.wait_for_lines(1, std::time::Duration::from_secs(15));
    assert_eq!(first.len(), 1, "no notify-next reached node B: {first:?}");
    // Canceling on node A tells the device on node B nothing is pending.
    let r = a.api("POST", "/api/v1/jobs/cluster-1/cancel", &key, None);
    assert_eq!(r.status, 200, "{}", r.text());
    let (ok, lines, err) = sub.wait();
    assert!(ok, "{err}");
    assert_eq!(lines.len(), 2, "{lines:?}");
    let payload = |line: &str| -> Value {
        let (topic, body) = line.split_once(' ').unwrap();
        assert_eq!(topic, "$aws/things/D1/jobs/notify-next");
        serde_json::from_str(body).unwrap()
    };
    let queued = payload(&lines[0]);
    assert_eq!(queued["execution"]["jobId"], "cluster-1", "{queued}");
    assert_eq!(queued["execution"]["status"], "QUEUED", "{queued}");
    let canceled = payload(&lines[1]);
    assert!(canceled.get("execution").is_none(), "{canceled}");
}
