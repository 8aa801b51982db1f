//! Device Shadow semantics against AWS IoT Core's documented examples, plus
//! the properties Onramp's shadow service relies on.

use onramp_domain::names::NameError;
use onramp_domain::shadow::{
    JsonObject, Patch, ShadowDocument, ShadowError, ShadowLimits, ShadowMetadata, ShadowState,
    UpdateOutcome, UpdateRequest, UpdateState, apply_update, client_token_for_reply,
    delete_response, delta, delta_metadata, get_response, metadata_for, nesting_depth,
    parse_client_token, parse_update_request, state_size, validate_shadow_name,
};
use proptest::prelude::*;
use serde_json::{Value, json};

fn limits() -> ShadowLimits {
    ShadowLimits::default()
}

fn obj(value: Value) -> JsonObject {
    value.as_object().cloned().expect("test value is an object")
}

fn request(value: Value) -> UpdateRequest {
    parse_update_request(value.to_string().as_bytes(), &limits()).expect("test request parses")
}

fn refused(bytes: &[u8]) -> ShadowError {
    parse_update_request(bytes, &limits()).expect_err("request is refused")
}

fn refused_json(value: Value) -> ShadowError {
    refused(value.to_string().as_bytes())
}

fn update(current: Option<&ShadowDocument>, floor: u64, req: Value, now: i64) -> UpdateOutcome {
    apply_update(current, floor, &request(req), &limits(), now).expect("update is accepted")
}

fn error(code: u16, message: &str) -> ShadowError {
    ShadowError {
        code,
        message: message.into(),
    }
}

// ---- delta: AWS's documented examples --------------------------------------

#[test]
fn delta_holds_desired_members_missing_or_different_in_reported() {
    // device-shadow-document.html, "Delta state".
    let first = update(
        None,
        15,
        json!({"state": {"reported": {"color": "GREEN", "engine": "ON"}}}),
        12345,
    );
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"desired": {"color": "RED", "state": "STOP"}}}),
        12345,
    );
    assert_eq!(
        get_response(&second.document, None, 123456789),
        json!({
            "state": {
                "desired": {"color": "RED", "state": "STOP"},
                "reported": {"color": "GREEN", "engine": "ON"},
                "delta": {"color": "RED", "state": "STOP"}
            },
            "metadata": {
                "desired": {"color": {"timestamp": 12345}, "state": {"timestamp": 12345}},
                "reported": {"color": {"timestamp": 12345}, "engine": {"timestamp": 12345}},
                "delta": {"color": {"timestamp": 12345}, "state": {"timestamp": 12345}}
            },
            "version": 17,
            "timestamp": 123456789
        })
    );
}

#[test]
fn nested_objects_are_diffed_down_to_the_leaf() {
    let desired = obj(json!({"lights": {"color": {"r": 255, "g": 255, "b": 255}}}));
    let reported = obj(json!({"lights": {"color": {"r": 255, "g": 0, "b": 255}}}));
    assert_eq!(
        delta(Some(&desired), Some(&reported)),
        Some(obj(json!({"lights": {"color": {"g": 255}}})))
    );

    let first = update(
        None,
        16,
        json!({"state": {"reported": reported}}),
        123456700,
    );
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"desired": desired}}),
        123456789,
    );
    let got = get_response(&second.document, None, 123456789);
    assert_eq!(got["version"], json!(18));
    assert_eq!(
        got["state"]["delta"],
        json!({"lights": {"color": {"g": 255}}})
    );
    assert_eq!(
        got["metadata"]["delta"],
        json!({"lights": {"color": {"g": {"timestamp": 123456789}}}})
    );
}

#[test]
fn get_returns_the_delta_and_its_desired_timestamps() {
    // The GET example of the 2016–2019 guide ("Retrieving a Shadow Document").
    let first = update(
        None,
        8,
        json!({"state": {"desired": {"lights": {"color": "RED"}, "engine": "ON"}}}),
        123456,
    );
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"reported": {"lights": {"color": "GREEN"}, "engine": "ON"}}}),
        789012,
    );
    assert_eq!(
        get_response(&second.document, None, 123456789),
        json!({
            "state": {
                "desired": {"lights": {"color": "RED"}, "engine": "ON"},
                "reported": {"lights": {"color": "GREEN"}, "engine": "ON"},
                "delta": {"lights": {"color": "RED"}}
            },
            "metadata": {
                "desired": {
                    "lights": {"color": {"timestamp": 123456}},
                    "engine": {"timestamp": 123456}
                },
                "reported": {
                    "lights": {"color": {"timestamp": 789012}},
                    "engine": {"timestamp": 789012}
                },
                "delta": {"lights": {"color": {"timestamp": 123456}}}
            },
            "version": 10,
            "timestamp": 123456789
        })
    );
}

#[test]
fn arrays_are_compared_and_replaced_whole() {
    let desired = obj(json!({"colors": ["RED", "GREEN"], "same": [1, 2]}));
    let reported = obj(json!({"colors": ["RED"], "same": [1, 2]}));
    assert_eq!(
        delta(Some(&desired), Some(&reported)),
        Some(obj(json!({"colors": ["RED", "GREEN"]})))
    );

    // device-shadow-document.html, "Array values in shadow documents".
    let first = update(
        None,
        0,
        json!({"state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}}}),
        10,
    );
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"desired": {"colors": ["RED"]}}}),
        20,
    );
    assert_eq!(
        second.document.state.desired,
        Some(obj(json!({"colors": ["RED"]})))
    );
    assert_eq!(
        second.document.metadata.desired,
        Some(obj(json!({"colors": [{"timestamp": 20}]})))
    );
}

#[test]
fn arrays_holding_null_are_refused() {
    assert_eq!(
        refused_json(json!({"state": {"desired": {"colors": [null, "RED", "GREEN"]}}})),
        error(400, "State contains an invalid node: 'colors'")
    );
    // Nulls nested inside an array's elements cannot mean "delete" either.
    assert_eq!(
        refused_json(json!({"state": {"reported": {"a": {"list": [[1], [{"x": null}]]}}}})).code,
        400
    );
}

#[test]
fn delta_ignores_reported_only_members_and_keeps_members_deleted_from_reported() {
    let desired = obj(json!({"a": 1, "b": 2}));
    let reported = obj(json!({"a": 1, "c": 3}));
    assert_eq!(
        delta(Some(&desired), Some(&reported)),
        Some(obj(json!({"b": 2})))
    );
    assert_eq!(delta(Some(&desired), None), Some(desired.clone()));
    assert_eq!(delta(None, Some(&reported)), None);
    assert_eq!(delta(Some(&desired), Some(&desired)), None);
    assert_eq!(delta(Some(&JsonObject::new()), Some(&reported)), None);

    let first = update(
        None,
        0,
        json!({"state": {"desired": {"a": 1}, "reported": {"a": 1}}}),
        1,
    );
    assert_eq!(first.delta, None);
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"reported": {"a": null}}}),
        2,
    );
    assert_eq!(
        second.delta,
        Some(json!({
            "state": {"a": 1},
            "metadata": {"a": {"timestamp": 1}},
            "version": 2,
            "timestamp": 2
        }))
    );
}

#[test]
fn an_object_against_a_scalar_is_a_difference_carried_whole() {
    let desired = obj(json!({"a": {"x": 1}, "b": 5}));
    let reported = obj(json!({"a": 5, "b": {"y": 1}}));
    assert_eq!(
        delta(Some(&desired), Some(&reported)),
        Some(desired.clone())
    );

    let meta = obj(metadata_for(&Value::Object(desired.clone()), 7));
    assert_eq!(
        delta_metadata(&desired, Some(&meta)),
        obj(json!({"a": {"x": {"timestamp": 7}}, "b": {"timestamp": 7}}))
    );
}

#[test]
fn numbers_are_compared_as_json_values() {
    let desired = obj(json!({"t": 1}));
    let reported = obj(json!({"t": 1.0}));
    assert_eq!(delta(Some(&desired), Some(&reported)), Some(desired));
}

// ---- merge ----------------------------------------------------------------

#[test]
fn null_deletes_members_and_whole_sections() {
    // The "Deleting Data" example of the 2016–2019 guide.
    let first = update(
        None,
        0,
        json!({"state": {
            "desired": {"lights": {"color": "RED"}, "engine": "ON"},
            "reported": {"lights": {"color": "GREEN"}, "engine": "OFF"}
        }}),
        100,
    );
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"desired": null, "reported": {"engine": null}}}),
        200,
    );
    assert_eq!(
        serde_json::to_value(&second.document).expect("serialises"),
        json!({
            "state": {"reported": {"lights": {"color": "GREEN"}}},
            "metadata": {"reported": {"lights": {"color": {"timestamp": 100}}}},
            "version": 2,
            "timestamp": 200
        })
    );
    assert_eq!(second.delta, None);
    assert_eq!(
        second.accepted,
        json!({
            "state": {"desired": null, "reported": {"engine": null}},
            "metadata": {"desired": {"timestamp": 200}, "reported": {"engine": {"timestamp": 200}}},
            "version": 2,
            "timestamp": 200
        })
    );
}

#[test]
fn a_device_can_drop_desired_while_reporting() {
    // device-shadow-document.html, "Empty shadow document properties".
    let first = update(None, 0, json!({"state": {"desired": {"color": "red"}}}), 1);
    assert!(first.delta.is_some());
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"reported": {"color": "red"}, "desired": null}}),
        2,
    );
    assert_eq!(second.document.state.desired, None);
    assert_eq!(second.document.metadata.desired, None);
    assert_eq!(
        second.document.state.reported,
        Some(obj(json!({"color": "red"})))
    );
    assert_eq!(second.delta, None);
}

#[test]
fn a_null_state_clears_the_shadow_without_deleting_it() {
    let first = update(
        None,
        0,
        json!({"state": {"desired": {"a": 1}, "reported": {"b": 2}}}),
        1,
    );
    let second = update(Some(&first.document), 0, json!({"state": null}), 2);
    assert_eq!(second.document.state, ShadowState::default());
    assert_eq!(second.document.metadata, ShadowMetadata::default());
    assert_eq!(second.document.version, 2);
    assert_eq!(
        get_response(&second.document, None, 3),
        json!({"state": {}, "metadata": {}, "version": 2, "timestamp": 3})
    );
}

#[test]
fn nested_merges_keep_untouched_leaves_and_their_timestamps() {
    // The "Updating a Shadow" example of the 2016–2019 guide.
    let first = update(
        None,
        0,
        json!({"state": {"reported": {"color": {"r": 255, "g": 255, "b": 0}}}}),
        100,
    );
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"desired": {"color": {"r": 10}, "engine": "ON"}}}),
        200,
    );
    assert_eq!(
        second.delta.as_ref().map(|d| d["state"].clone()),
        Some(json!({"color": {"r": 10}, "engine": "ON"}))
    );
    let third = update(
        Some(&second.document),
        0,
        json!({"state": {"reported": {"color": {"r": 10}, "engine": "ON"}}}),
        300,
    );
    assert_eq!(
        third.document.state.reported,
        Some(obj(
            json!({"color": {"r": 10, "g": 255, "b": 0}, "engine": "ON"})
        ))
    );
    assert_eq!(
        third.document.metadata.reported,
        Some(obj(json!({
            "color": {"r": {"timestamp": 300}, "g": {"timestamp": 100}, "b": {"timestamp": 100}},
            "engine": {"timestamp": 300}
        })))
    );
    assert_eq!(third.delta, None);
}

#[test]
fn objects_emptied_by_deletions_go_but_written_empty_objects_stay() {
    let first = update(
        None,
        0,
        json!({"state": {"reported": {"a": {"x": 1}, "keep": {}}}}),
        1,
    );
    assert_eq!(
        first.document.state.reported,
        Some(obj(json!({"a": {"x": 1}, "keep": {}})))
    );
    assert_eq!(
        first.document.metadata.reported,
        Some(obj(json!({"a": {"x": {"timestamp": 1}}, "keep": {}})))
    );
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"reported": {"a": {"x": null}, "gone": {"y": null}}}}),
        2,
    );
    assert_eq!(
        second.document.state.reported,
        Some(obj(json!({"keep": {}})))
    );
    let third = update(
        Some(&second.document),
        0,
        json!({"state": {"reported": {"keep": null}}}),
        3,
    );
    assert_eq!(third.document.state.reported, None);
    assert_eq!(third.document.metadata.reported, None);
}

#[test]
fn an_update_that_changes_nothing_still_bumps_the_version_without_a_delta() {
    let first = update(
        None,
        0,
        json!({"state": {"desired": {"color": "RED"}, "reported": {"color": "RED"}}}),
        1,
    );
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"reported": {"color": "RED"}}}),
        2,
    );
    assert_eq!(second.document.version, first.document.version + 1);
    assert_eq!(second.document.state, first.document.state);
    assert_eq!(second.delta, None);
    assert_eq!(
        second.document.metadata.reported,
        Some(obj(json!({"color": {"timestamp": 2}})))
    );
    let empty = update(Some(&second.document), 0, json!({"state": {}}), 3);
    assert_eq!(empty.document.version, 3);
    assert_eq!(empty.document.state, first.document.state);
}

#[test]
fn a_pending_delta_is_published_again_after_any_accepted_update() {
    let first = update(
        None,
        0,
        json!({"state": {"desired": {"a": 1, "b": 2}, "reported": {"a": 0}}}),
        1,
    );
    let second = update(
        Some(&first.document),
        0,
        json!({"state": {"reported": {"a": 1}}}),
        2,
    );
    assert_eq!(
        second.delta,
        Some(json!({
            "state": {"b": 2},
            "metadata": {"b": {"timestamp": 1}},
            "version": 2,
            "timestamp": 2
        }))
    );
}

// ---- versions ----------------------------------------------------------------

#[test]
fn a_stale_version_is_a_conflict_and_changes_nothing() {
    // device-shadow-data-flow.html, "Optimistic locking".
    let initial = update(
        None,
        9,
        json!({"state": {"desired": {"colors": ["RED", "GREEN", "BLUE"]}}}),
        1,
    )
    .document;
    assert_eq!(initial.version, 10);
    let before = initial.clone();

    let stale = request(json!({
        "state": {"desired": {"colors": ["BLUE"]}},
        "version": 9,
        "clientToken": "426bfd96-e720-46d3-95cd-014e3ef12bb6"
    }));
    let err = apply_update(Some(&initial), 0, &stale, &limits(), 2).expect_err("conflict");
    assert_eq!(err, ShadowError::version_conflict());
    assert_eq!(
        err.to_reject_json(stale.client_token.as_deref(), 2),
        json!({
            "code": 409,
            "message": "Version conflict",
            "timestamp": 2,
            "clientToken": "426bfd96-e720-46d3-95cd-014e3ef12bb6"
        })
    );
    assert_eq!(initial, before);

    let current = update(
        Some(&initial),
        0,
        json!({"state": {"desired": {"colors": ["BLUE"]}}, "version": 10}),
        3,
    );
    assert_eq!(current.document.version, 11);
    assert_eq!(
        current.document.state.desired,
        Some(obj(json!({"colors": ["BLUE"]})))
    );
}

#[test]
fn numbering_continues_across_delete_and_recreate() {
    let created = update(None, 0, json!({"state": {"reported": {"on": true}}}), 1);
    assert_eq!(created.document.version, 1);
    let mut doc = created.document;
    for now in 2..=4 {
        doc = update(
            Some(&doc),
            0,
            json!({"state": {"reported": {"n": now}}}),
            now,
        )
        .document;
    }
    assert_eq!(doc.version, 4);

    // device-shadow-data-flow.html, "Deleting a shadow".
    assert_eq!(
        delete_response(doc.version, None, 1591057529),
        json!({"version": 4, "timestamp": 1591057529})
    );
    assert_eq!(
        delete_response(doc.version, Some("tok"), 1591057529),
        json!({"version": 4, "timestamp": 1591057529, "clientToken": "tok"})
    );

    // The caller keeps the deleted shadow's version as the floor.
    let floor = doc.version;
    let stale = request(json!({"state": {"reported": {"on": true}}, "version": 0}));
    assert_eq!(
        apply_update(None, floor, &stale, &limits(), 5),
        Err(ShadowError::version_conflict())
    );
    let recreated = update(
        None,
        floor,
        json!({"state": {"reported": {"on": true}}, "version": 4}),
        5,
    );
    assert_eq!(recreated.document.version, 5);
    assert_eq!(recreated.accepted["version"], json!(5));
    assert_eq!(recreated.documents.get("previous"), None);
    assert_eq!(recreated.documents["current"]["version"], json!(5));
}

// ---- payloads: AWS's SmartLamp walkthrough (using-device-shadows.html) ---------

#[test]
fn the_smart_lamp_walkthrough_produces_awss_payloads() {
    let lamp_token = "426bfd96-e720-46d3-95cd-014e3ef12bb6";
    let created = update(
        None,
        2,
        json!({
            "state": {"reported": {"ID": "SmartLamp21", "ColorRGB": [128, 128, 128]}},
            "clientToken": lamp_token
        }),
        1591140517,
    );
    assert_eq!(created.delta, None);
    assert_eq!(
        get_response(&created.document, Some(lamp_token), 1591140517),
        json!({
            "state": {"reported": {"ID": "SmartLamp21", "ColorRGB": [128, 128, 128]}},
            "metadata": {"reported": {
                "ID": {"timestamp": 1591140517},
                "ColorRGB": [
                    {"timestamp": 1591140517}, {"timestamp": 1591140517}, {"timestamp": 1591140517}
                ]
            }},
            "version": 3,
            "timestamp": 1591140517,
            "clientToken": lamp_token
        })
    );
    assert_eq!(
        get_response(&created.document, None, 1591141111)["timestamp"],
        json!(1591141111)
    );

    let app_token = "21b21b21-bfd2-4279-8c65-e2f697ff4fab";
    let desired = update(
        Some(&created.document),
        0,
        json!({"state": {"desired": {"ColorRGB": [255, 255, 0]}}, "clientToken": app_token}),
        1591141596,
    );
    let yellow_meta = json!([
        {"timestamp": 1591141596}, {"timestamp": 1591141596}, {"timestamp": 1591141596}
    ]);
    assert_eq!(
        desired.accepted,
        json!({
            "state": {"desired": {"ColorRGB": [255, 255, 0]}},
            "metadata": {"desired": {"ColorRGB": yellow_meta}},
            "version": 4,
            "timestamp": 1591141596,
            "clientToken": app_token
        })
    );
    assert_eq!(
        desired.delta,
        Some(json!({
            "version": 4,
            "timestamp": 1591141596,
            "state": {"ColorRGB": [255, 255, 0]},
            "metadata": {"ColorRGB": yellow_meta},
            "clientToken": app_token
        }))
    );

    let device_token = "a4dc2227-9213-4c6a-a6a5-053304f60258";
    let reported = update(
        Some(&desired.document),
        0,
        json!({"state": {"reported": {"ColorRGB": [255, 255, 0]}}, "clientToken": device_token}),
        1591142747,
    );
    let reported_meta = json!([
        {"timestamp": 1591142747}, {"timestamp": 1591142747}, {"timestamp": 1591142747}
    ]);
    let grey_meta = json!([
        {"timestamp": 1591140517}, {"timestamp": 1591140517}, {"timestamp": 1591140517}
    ]);
    assert_eq!(
        reported.accepted,
        json!({
            "state": {"reported": {"ColorRGB": [255, 255, 0]}},
            "metadata": {"reported": {"ColorRGB": reported_meta}},
            "version": 5,
            "timestamp": 1591142747,
            "clientToken": device_token
        })
    );
    assert_eq!(reported.delta, None);
    assert_eq!(
        reported.documents,
        json!({
            "previous": {
                "state": {
                    "desired": {"ColorRGB": [255, 255, 0]},
                    "reported": {"ID": "SmartLamp21", "ColorRGB": [128, 128, 128]}
                },
                "metadata": {
                    "desired": {"ColorRGB": yellow_meta},
                    "reported": {"ID": {"timestamp": 1591140517}, "ColorRGB": grey_meta}
                },
                "version": 4
            },
            "current": {
                "state": {
                    "desired": {"ColorRGB": [255, 255, 0]},
                    "reported": {"ID": "SmartLamp21", "ColorRGB": [255, 255, 0]}
                },
                "metadata": {
                    "desired": {"ColorRGB": yellow_meta},
                    "reported": {"ID": {"timestamp": 1591140517}, "ColorRGB": reported_meta}
                },
                "version": 5
            },
            "timestamp": 1591142747,
            "clientToken": device_token
        })
    );
    assert_eq!(
        get_response(&reported.document, None, 1591143269),
        json!({
            "state": {
                "desired": {"ColorRGB": [255, 255, 0]},
                "reported": {"ID": "SmartLamp21", "ColorRGB": [255, 255, 0]}
            },
            "metadata": {
                "desired": {"ColorRGB": yellow_meta},
                "reported": {"ID": {"timestamp": 1591140517}, "ColorRGB": reported_meta}
            },
            "version": 5,
            "timestamp": 1591143269
        })
    );
}

#[test]
fn the_stored_document_has_awss_json_shape() {
    let doc = update(
        None,
        0,
        json!({"state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN"]}}}),
        12345,
    )
    .document;
    let value = serde_json::to_value(&doc).expect("serialises");
    assert_eq!(
        value,
        json!({
            "state": {"desired": {"color": "RED", "sequence": ["RED", "GREEN"]}},
            "metadata": {"desired": {
                "color": {"timestamp": 12345},
                "sequence": [{"timestamp": 12345}, {"timestamp": 12345}]
            }},
            "version": 1,
            "timestamp": 12345
        })
    );
    let back: ShadowDocument = serde_json::from_value(value).expect("deserialises");
    assert_eq!(back, doc);
    let bare: ShadowDocument =
        serde_json::from_value(json!({"version": 3, "timestamp": 9})).expect("deserialises");
    assert_eq!(bare.state, ShadowState::default());
}

// ---- errors -------------------------------------------------------------------

#[test]
fn malformed_payloads_are_invalid_json() {
    for bad in [
        &b"{not json"[..],
        b"",
        b"[1, 2]",
        b"\"state\"",
        b"null",
        b"{\"state\": {}} trailing",
    ] {
        assert_eq!(refused(bad), ShadowError::invalid_json(), "{bad:?}");
    }
}

#[test]
fn payloads_that_are_not_utf8_are_unsupported() {
    assert_eq!(
        refused(b"{\"state\":{\"reported\":{\"a\":\"\xff\"}}}"),
        error(
            415,
            "Unsupported documented encoding; supported encoding is UTF-8"
        )
    );
}

#[test]
fn state_must_be_present_and_an_object() {
    assert_eq!(
        refused_json(json!({"clientToken": "t"})),
        error(400, "Missing required node: state")
    );
    for state in [json!(5), json!("x"), json!([1]), json!(true)] {
        assert_eq!(
            refused_json(json!({"state": state})),
            error(400, "State node must be an object")
        );
    }
    assert_eq!(
        refused_json(json!({"state": {"desired": [1]}})),
        error(400, "Desired node must be an object")
    );
    assert_eq!(
        refused_json(json!({"state": {"reported": "on"}})),
        error(400, "Reported node must be an object")
    );
    assert_eq!(
        refused_json(json!({"state": {"delta": {"a": 1}}})),
        error(400, "State contains an invalid node: 'delta'")
    );
}

#[test]
fn members_outside_state_are_ignored() {
    let req = request(json!({
        "state": {"desired": {"a": 1}},
        "metadata": {"x": 1},
        "timestamp": 5,
        "anything": [null]
    }));
    assert_eq!(req.state.desired, Patch::Merge(obj(json!({"a": 1}))));
    assert_eq!(req.state.reported, Patch::Absent);
    assert_eq!(req.version, None);
    assert_eq!(req.client_token, None);
}

#[test]
fn version_must_be_a_non_negative_integer() {
    for version in [json!(-1), json!("3"), json!(1.5), json!([1])] {
        assert_eq!(
            refused_json(json!({"state": {}, "version": version})),
            error(400, "Invalid version")
        );
    }
    assert_eq!(request(json!({"state": {}, "version": 7})).version, Some(7));
    assert_eq!(request(json!({"state": {}, "version": null})).version, None);
}

#[test]
fn client_tokens_are_at_most_64_bytes() {
    let ok = "t".repeat(64);
    assert_eq!(
        request(json!({"state": {}, "clientToken": ok})).client_token,
        Some(ok.clone())
    );
    let invalid = error(400, "Invalid clientToken");
    assert_eq!(
        refused_json(json!({"state": {}, "clientToken": "t".repeat(65)})),
        invalid
    );
    // Bytes, not characters: 33 two-byte characters are 66 bytes.
    assert_eq!(
        refused_json(json!({"state": {}, "clientToken": "é".repeat(33)})),
        invalid
    );
    assert_eq!(
        refused_json(json!({"state": {}, "clientToken": 42})),
        invalid
    );
}

#[test]
fn nesting_deeper_than_six_levels_is_refused() {
    // The 2019 limits table's example: five levels of keys below `desired`.
    let six = json!({"one": {"two": {"three": {"four": {"five": {"leaf": 1}}}}}});
    assert_eq!(nesting_depth(&six), 6);
    assert!(
        parse_update_request(
            json!({"state": {"desired": six}}).to_string().as_bytes(),
            &limits()
        )
        .is_ok()
    );

    let too_deep = error(
        400,
        "JSON contains too many levels of nesting; maximum is 6",
    );
    let seven = json!({"one": {"two": {"three": {"four": {"five": {"six": {}}}}}}});
    assert_eq!(
        refused_json(json!({"state": {"reported": seven}})),
        too_deep
    );
    let arrays = json!({"a": [[[[[[1]]]]]]});
    assert_eq!(
        refused_json(json!({"state": {"desired": arrays}})),
        too_deep
    );
    let pathological = format!(
        "{{\"state\":{{\"desired\":{{\"a\":{}1{}}}}}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    assert_eq!(refused(pathological.as_bytes()), too_deep);
}

#[test]
fn oversized_state_is_refused_with_413() {
    let too_large = error(413, "The payload exceeds the maximum size allowed");
    // {"a":"…"} is 8 bytes of framing around the string.
    let at_limit = json!({"state": {"desired": {"a": "x".repeat(8192 - 8)}}});
    let req = request(at_limit);
    if let Patch::Merge(body) = &req.state.desired {
        assert_eq!(state_size(Some(body), None), 8192);
    }
    let over = json!({"state": {"desired": {"a": "x".repeat(8192 - 7)}}});
    assert_eq!(refused_json(over), too_large);

    // Whitespace does not count against the state limit ...
    let spaced = format!(
        "{{\"state\":{{\"reported\":{{\"a\":{}1}}}}}}",
        " ".repeat(20_000)
    );
    assert!(parse_update_request(spaced.as_bytes(), &limits()).is_ok());
    // ... but the raw payload is bounded too.
    let huge = format!(
        "{{\"state\":{{\"reported\":{{\"a\":{}1}}}}}}",
        " ".repeat(200_000)
    );
    assert_eq!(refused(huge.as_bytes()), too_large);

    // The merged document must fit as well; the refusal changes nothing.
    let doc = update(
        None,
        0,
        json!({"state": {"reported": {"r": "x".repeat(5000)}}}),
        1,
    )
    .document;
    let before = doc.clone();
    let grow = request(json!({"state": {"desired": {"d": "y".repeat(5000)}}}));
    assert_eq!(
        apply_update(Some(&doc), 0, &grow, &limits(), 2),
        Err(too_large)
    );
    assert_eq!(doc, before);
}

#[test]
fn every_documented_error_has_awss_code_and_message() {
    let cases = [
        (ShadowError::invalid_json(), 400, "Invalid JSON"),
        (
            ShadowError::missing_state(),
            400,
            "Missing required node: state",
        ),
        (
            ShadowError::state_not_object(),
            400,
            "State node must be an object",
        ),
        (
            ShadowError::desired_not_object(),
            400,
            "Desired node must be an object",
        ),
        (
            ShadowError::reported_not_object(),
            400,
            "Reported node must be an object",
        ),
        (ShadowError::invalid_version(), 400, "Invalid version"),
        (
            ShadowError::invalid_client_token(),
            400,
            "Invalid clientToken",
        ),
        (
            ShadowError::too_deep(6),
            400,
            "JSON contains too many levels of nesting; maximum is 6",
        ),
        (ShadowError::unauthorized(), 401, "Unauthorized"),
        (ShadowError::forbidden(), 403, "Forbidden"),
        (ShadowError::thing_not_found(), 404, "Thing not found"),
        (
            ShadowError::no_shadow("simShadow1"),
            404,
            "No shadow exists with name: 'simShadow1'",
        ),
        (ShadowError::version_conflict(), 409, "Version conflict"),
        (
            ShadowError::payload_too_large(),
            413,
            "The payload exceeds the maximum size allowed",
        ),
        (
            ShadowError::unsupported_encoding(),
            415,
            "Unsupported documented encoding; supported encoding is UTF-8",
        ),
        (ShadowError::too_many_requests(), 429, "Too many requests"),
        (ShadowError::internal(), 500, "Internal service failure"),
    ];
    for (err, code, message) in cases {
        assert_eq!(err, error(code, message));
    }
}

#[test]
fn rejections_have_awss_shape() {
    // using-device-shadows.html: GET of a named shadow that was never created.
    assert_eq!(
        ShadowError::no_shadow("simShadow1").to_reject_json(None, 1591140000),
        json!({
            "code": 404,
            "message": "No shadow exists with name: 'simShadow1'",
            "timestamp": 1591140000
        })
    );
    assert_eq!(
        ShadowError::too_many_requests().to_reject_json(Some("c1"), 7),
        json!({"code": 429, "message": "Too many requests", "timestamp": 7, "clientToken": "c1"})
    );
}

#[test]
fn client_tokens_are_read_for_get_delete_and_rejections() {
    let l = limits();
    assert_eq!(parse_client_token(b"", &l), Ok(None));
    assert_eq!(parse_client_token(b"  \n", &l), Ok(None));
    assert_eq!(parse_client_token(b"{}", &l), Ok(None));
    assert_eq!(
        parse_client_token(br#"{"clientToken":"abc","other":1}"#, &l),
        Ok(Some("abc".into()))
    );
    assert_eq!(
        parse_client_token(b"not json", &l),
        Err(ShadowError::invalid_json())
    );
    let long = json!({"clientToken": "t".repeat(65)}).to_string();
    assert_eq!(
        parse_client_token(long.as_bytes(), &l),
        Err(ShadowError::invalid_client_token())
    );

    assert_eq!(
        client_token_for_reply(br#"{"clientToken":"abc"}"#, &l),
        Some("abc".into())
    );
    assert_eq!(
        client_token_for_reply(br#"{"clientToken":"abc","state":7}"#, &l),
        Some("abc".into())
    );
    assert_eq!(client_token_for_reply(b"{broken", &l), None);
    assert_eq!(client_token_for_reply(long.as_bytes(), &l), None);
}

// ---- names ----------------------------------------------------------------------

#[test]
fn shadow_names_follow_awss_grammar_without_the_reserved_dollar_prefix() {
    for ok in ["simShadow1", "a", "x:y_z-0", "cfg$v2", &"n".repeat(64)] {
        assert_eq!(validate_shadow_name(ok), Ok(()), "{ok:?}");
    }
    assert_eq!(
        validate_shadow_name(""),
        Err(NameError::Empty {
            what: "shadow name"
        })
    );
    assert!(matches!(
        validate_shadow_name(&"n".repeat(65)),
        Err(NameError::TooLong { max: 64, .. })
    ));
    for bad in [
        "$package", "$", "a/b", "a+b", "a#", "a b", "é", "a.b", "a\0",
    ] {
        assert!(validate_shadow_name(bad).is_err(), "{bad:?}");
    }
}

// ---- properties -------------------------------------------------------------------

fn key() -> impl Strategy<Value = String> {
    prop_oneof![Just("a"), Just("b"), Just("c"), Just("color")].prop_map(String::from)
}

fn leaf() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<bool>().prop_map(Value::from),
        (-3i64..4).prop_map(Value::from),
        "[a-c]{0,3}".prop_map(Value::from),
    ]
}

/// A stored value: no nulls anywhere.
fn value() -> impl Strategy<Value = Value> {
    leaf().prop_recursive(3, 24, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(key(), inner, 0..3)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn plain_object() -> impl Strategy<Value = JsonObject> {
    prop::collection::btree_map(key(), value(), 0..4).prop_map(|m| m.into_iter().collect())
}

/// An update body: members may be null (delete) or nested updates.
fn patch_object() -> impl Strategy<Value = JsonObject> {
    let member = prop_oneof![Just(Value::Null), value()];
    prop::collection::btree_map(key(), member, 0..4)
        .prop_map(|m| Value::Object(m.into_iter().collect()))
        .prop_recursive(2, 24, 3, |inner| {
            prop::collection::btree_map(key(), prop_oneof![Just(Value::Null), value(), inner], 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect()))
        })
        .prop_map(|v| match v {
            Value::Object(m) => m,
            _ => JsonObject::new(),
        })
}

fn patch() -> impl Strategy<Value = Patch> {
    prop_oneof![
        2 => Just(Patch::Absent),
        1 => Just(Patch::Delete),
        5 => patch_object().prop_map(Patch::Merge),
    ]
}

fn update_request() -> impl Strategy<Value = UpdateRequest> {
    (patch(), patch()).prop_map(|(desired, reported)| UpdateRequest {
        state: UpdateState { desired, reported },
        version: None,
        client_token: None,
    })
}

/// A shadow built by a short history of updates (or none at all).
fn shadow() -> impl Strategy<Value = Option<ShadowDocument>> {
    prop::collection::vec(update_request(), 0..4).prop_map(|history| {
        let mut doc: Option<ShadowDocument> = None;
        for (now, req) in (1..).zip(history) {
            if let Ok(outcome) = apply_update(doc.as_ref(), 0, &req, &limits(), now) {
                doc = Some(outcome.document);
            }
        }
        doc
    })
}

fn arbitrary_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,8}".prop_map(Value::from),
    ];
    leaf.prop_recursive(8, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop_oneof![
                    key(),
                    Just("state".to_string()),
                    Just("desired".to_string()),
                    Just("reported".to_string()),
                    Just("version".to_string()),
                    Just("clientToken".to_string())
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn compact(value: &Value) -> usize {
    value.to_string().len()
}

proptest! {
    #[test]
    fn reporting_the_delta_leaves_no_delta(doc in shadow()) {
        let Some(doc) = doc else { return Ok(()) };
        let Some(pending) = doc.delta() else { return Ok(()) };
        let report = UpdateRequest {
            state: UpdateState { desired: Patch::Absent, reported: Patch::Merge(pending) },
            ..UpdateRequest::default()
        };
        let outcome = apply_update(Some(&doc), 0, &report, &limits(), 100)
            .expect("reporting the delta is accepted");
        prop_assert_eq!(outcome.document.delta(), None);
        prop_assert_eq!(outcome.delta, None);
    }

    #[test]
    fn resending_unchanged_values_yields_no_delta(
        state in plain_object(),
        as_desired in prop::collection::vec(key(), 0..4),
        as_reported in prop::collection::vec(key(), 0..4),
    ) {
        let both = UpdateRequest {
            state: UpdateState {
                desired: Patch::Merge(state.clone()),
                reported: Patch::Merge(state.clone()),
            },
            ..UpdateRequest::default()
        };
        let doc = apply_update(None, 0, &both, &limits(), 1).expect("accepted").document;
        prop_assert_eq!(doc.delta(), None);
        let pick = |keys: &[String]| -> JsonObject {
            state.iter().filter(|(k, _)| keys.contains(k)).map(|(k, v)| (k.clone(), v.clone())).collect()
        };
        let resend = UpdateRequest {
            state: UpdateState {
                desired: Patch::Merge(pick(&as_desired)),
                reported: Patch::Merge(pick(&as_reported)),
            },
            ..UpdateRequest::default()
        };
        let outcome = apply_update(Some(&doc), 0, &resend, &limits(), 2).expect("accepted");
        prop_assert_eq!(outcome.delta, None);
        prop_assert_eq!(&outcome.document.state, &doc.state);
        prop_assert_eq!(outcome.document.version, doc.version + 1);
    }

    #[test]
    fn applying_an_update_twice_gives_the_same_state(doc in shadow(), req in update_request()) {
        let Ok(once) = apply_update(doc.as_ref(), 0, &req, &limits(), 50) else { return Ok(()) };
        let twice = apply_update(Some(&once.document), 0, &req, &limits(), 51)
            .expect("an update accepted once is accepted again");
        prop_assert_eq!(&twice.document.state, &once.document.state);
        let start = doc.as_ref().map_or(0, |d| d.version);
        prop_assert_eq!(twice.document.version, start + 2);
    }

    #[test]
    fn published_payloads_respect_the_limits(
        doc in shadow(),
        body in prop::collection::btree_map(
            prop_oneof![Just("desired"), Just("reported")].prop_map(String::from),
            prop_oneof![Just(Value::Null), arbitrary_json()],
            0..3,
        ),
    ) {
        let tight = ShadowLimits { max_state_bytes: 96, max_depth: 3, ..ShadowLimits::default() };
        let text = json!({"state": body}).to_string();
        let Ok(req) = parse_update_request(text.as_bytes(), &tight) else { return Ok(()) };
        // The starting shadow may itself exceed the tight limits; then refusal is expected.
        let Ok(outcome) = apply_update(doc.as_ref(), 0, &req, &tight, 60) else { return Ok(()) };
        let accepted = &outcome.accepted["state"];
        prop_assert!(
            state_size(accepted["desired"].as_object(), accepted["reported"].as_object())
                <= tight.max_state_bytes
        );
        for section in ["desired", "reported"] {
            prop_assert!(nesting_depth(&accepted[section]) <= tight.max_depth);
        }
        let state = &outcome.document.state;
        prop_assert!(state_size(state.desired.as_ref(), state.reported.as_ref()) <= tight.max_state_bytes);
        if let Some(delta) = &outcome.delta {
            prop_assert!(compact(&delta["state"]) <= tight.max_state_bytes);
            prop_assert!(nesting_depth(&delta["state"]) <= tight.max_depth);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = parse_update_request(&bytes, &limits());
        let _ = parse_client_token(&bytes, &limits());
        let _ = client_token_for_reply(&bytes, &limits());
    }

    #[test]
    fn json_like_text_never_panics(text in r#"[\[\]{}":,\\ a-z0-9.-]{0,80}"#) {
        let _ = parse_update_request(text.as_bytes(), &limits());
    }

    #[test]
    fn arbitrary_json_never_panics(doc in shadow(), body in arbitrary_json(), wrap in 0u8..3) {
        let payload = match wrap {
            0 => body,
            1 => json!({"state": body, "clientToken": "t"}),
            _ => json!({"state": {"desired": body.clone(), "reported": body}, "version": 1}),
        };
        let text = payload.to_string();
        if let Ok(req) = parse_update_request(text.as_bytes(), &limits())
            && let Ok(outcome) = apply_update(doc.as_ref(), 0, &req, &limits(), 70)
        {
            let _ = get_response(&outcome.document, req.client_token.as_deref(), 71);
        }
    }
}
