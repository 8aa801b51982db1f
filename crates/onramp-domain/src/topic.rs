//! MQTT topic names, topic filters and shared subscriptions (MQTT 3.1.1 and 5.0).
//!
//! These are the broker's rules for routing messages. They are unrelated to
//! policy matching, where `+` and `#` are plain characters (see `policy`).

/// The longest topic name or filter MQTT can encode (a UTF-8 string's length prefix is 16 bits).
pub const TOPIC_MAX_BYTES: usize = 65_535;

const SHARE_PREFIX: &str = "$share/";

/// Why a topic name, topic filter or subscription is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    #[error("a topic {what} must not be empty")]
    Empty { what: &'static str },
    #[error("a topic {what} is {len} bytes long; MQTT allows at most {TOPIC_MAX_BYTES}")]
    TooLong { what: &'static str, len: usize },
    #[error("a topic {what} must not contain NUL (found at byte {at})")]
    Nul { what: &'static str, at: usize },
    #[error("a topic name must not contain the wildcard `{ch}` (found at byte {at})")]
    WildcardInName { ch: char, at: usize },
    #[error("`+` must fill a whole level of a topic filter, but level {level} is `{text}`")]
    PlusNotWholeLevel { level: usize, text: String },
    #[error("`#` must be the whole last level of a topic filter, but level {level} is `{text}`")]
    HashNotLast { level: usize, text: String },
    #[error("a shared subscription needs a non-empty group name after `$share/`")]
    EmptyShareGroup,
    #[error("the share group `{group}` must not contain `+` or `#`")]
    BadShareGroup { group: String },
    #[error("the shared subscription `$share/{group}` has no topic filter after the group")]
    MissingShareFilter { group: String },
}

/// A SUBSCRIBE entry: a topic filter, shared within a group or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The group of a `$share/{group}/{filter}` subscription; `None` for an ordinary one.
    pub share_group: Option<String>,
    /// The filter that topics are matched against.
    pub filter: String,
}

fn check_common(s: &str, what: &'static str) -> Result<(), TopicError> {
    if s.is_empty() {
        return Err(TopicError::Empty { what });
    }
    if s.len() > TOPIC_MAX_BYTES {
        return Err(TopicError::TooLong { what, len: s.len() });
    }
    if let Some(at) = s.find('\0') {
        return Err(TopicError::Nul { what, at });
    }
    Ok(())
}

/// Checks a topic name as used in PUBLISH: non-empty, at most 65535 bytes, no NUL, no wildcard.
pub fn validate_topic_name(topic: &str) -> Result<(), TopicError> {
    check_common(topic, "name")?;
    if let Some((at, ch)) = topic.char_indices().find(|&(_, c)| c == '+' || c == '#') {
        return Err(TopicError::WildcardInName { ch, at });
    }
    Ok(())
}

/// Checks a topic filter as used in SUBSCRIBE: `+` fills a level, `#` fills only the last one.
pub fn validate_topic_filter(filter: &str) -> Result<(), TopicError> {
    check_common(filter, "filter")?;
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len() - 1;
    for (level, text) in levels.iter().enumerate() {
        if text.contains('#') && (*text != "#" || level != last) {
            return Err(TopicError::HashNotLast {
                level,
                text: (*text).to_owned(),
            });
        }
        if text.contains('+') && *text != "+" {
            return Err(TopicError::PlusNotWholeLevel {
                level,
                text: (*text).to_owned(),
            });
        }
    }
    Ok(())
}

/// Whether `topic` reaches a subscription on `filter` (no `$share/` prefix); false if either is malformed.
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    if validate_topic_filter(filter).is_err() || validate_topic_name(topic).is_err() {
        return false;
    }
    // `$` topics are the server's own ($SYS, $aws); a leading wildcard must not reach them.
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for want in filter.split('/') {
        if want == "#" {
            // Also matches the parent level itself: `a/#` matches `a`.
            return true;
        }
        match topic_levels.next() {
            Some(got) if want == "+" || want == got => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

/// Splits `$share/{group}/{filter}` into its group and filter; other filters have no group.
pub fn parse_subscription(text: &str) -> Result<Subscription, TopicError> {
    let Some(rest) = text.strip_prefix(SHARE_PREFIX) else {
        validate_topic_filter(text)?;
        return Ok(Subscription {
            share_group: None,
            filter: text.to_owned(),
        });
    };
    let Some((group, filter)) = rest.split_once('/') else {
        if rest.is_empty() {
            return Err(TopicError::EmptyShareGroup);
        }
        return Err(TopicError::MissingShareFilter {
            group: rest.to_owned(),
        });
    };
    if group.is_empty() {
        return Err(TopicError::EmptyShareGroup);
    }
    if group.contains(['+', '#']) {
        return Err(TopicError::BadShareGroup {
            group: group.to_owned(),
        });
    }
    if filter.is_empty() {
        return Err(TopicError::MissingShareFilter {
            group: group.to_owned(),
        });
    }
    validate_topic_filter(filter)?;
    Ok(Subscription {
        share_group: Some(group.to_owned()),
        filter: filter.to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn topic_names() {
        assert!(validate_topic_name("a/b/c").is_ok());
        assert!(validate_topic_name("/").is_ok());
        assert!(validate_topic_name("$aws/things/t1/shadow/get").is_ok());
        assert_eq!(
            validate_topic_name(""),
            Err(TopicError::Empty { what: "name" })
        );
        assert_eq!(
            validate_topic_name("a/+/c"),
            Err(TopicError::WildcardInName { ch: '+', at: 2 })
        );
        assert_eq!(
            validate_topic_name("a#"),
            Err(TopicError::WildcardInName { ch: '#', at: 1 })
        );
        assert_eq!(
            validate_topic_name("a\0b"),
            Err(TopicError::Nul {
                what: "name",
                at: 1
            })
        );
        assert!(validate_topic_name(&"x".repeat(TOPIC_MAX_BYTES)).is_ok());
        assert_eq!(
            validate_topic_name(&"x".repeat(TOPIC_MAX_BYTES + 1)),
            Err(TopicError::TooLong {
                what: "name",
                len: TOPIC_MAX_BYTES + 1
            })
        );
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#", "+", "a/#", "+/+", "a/+/c", "/+", "+/", "a//#", "$SYS/#",
        ] {
            assert!(validate_topic_filter(ok).is_ok(), "{ok:?}");
        }
        assert_eq!(
            validate_topic_filter("a/b+/c"),
            Err(TopicError::PlusNotWholeLevel {
                level: 1,
                text: "b+".into()
            })
        );
        assert_eq!(
            validate_topic_filter("a/#/c"),
            Err(TopicError::HashNotLast {
                level: 1,
                text: "#".into()
            })
        );
        assert_eq!(
            validate_topic_filter("a#"),
            Err(TopicError::HashNotLast {
                level: 0,
                text: "a#".into()
            })
        );
        assert_eq!(
            validate_topic_filter("x/\0"),
            Err(TopicError::Nul {
                what: "filter",
                at: 2
            })
        );
        assert_eq!(
            validate_topic_filter(""),
            Err(TopicError::Empty { what: "filter" })
        );
    }

    #[test]
    fn matching_follows_the_spec_examples() {
        assert!(filter_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1"
        ));
        assert!(filter_matches(
            "sport/tennis/player1/#",
            "sport/tennis/player1/ranking"
        ));
        assert!(filter_matches("sport/#", "sport"));
        assert!(filter_matches("#", "sport/tennis"));
        assert!(filter_matches("sport/tennis/+", "sport/tennis/player1"));
        assert!(!filter_matches(
            "sport/tennis/+",
            "sport/tennis/player1/ranking"
        ));
        assert!(!filter_matches("sport/+", "sport"));
        assert!(filter_matches("sport/+", "sport/"));
        assert!(filter_matches("+/+", "/finance"));
        assert!(filter_matches("/+", "/finance"));
        assert!(!filter_matches("+", "/finance"));
        assert!(filter_matches("a//c", "a//c"));
        assert!(filter_matches("a/+/c", "a//c"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("a/b/c", "a/b"));
        assert!(!filter_matches("A/b", "a/b"));
    }

    #[test]
    fn leading_wildcards_do_not_reach_dollar_topics() {
        assert!(!filter_matches("#", "$SYS/broker"));
        assert!(!filter_matches("+/monitor/Clients", "$SYS/monitor/Clients"));
        assert!(filter_matches("$SYS/#", "$SYS/monitor/Clients"));
        assert!(filter_matches("$SYS/monitor/+", "$SYS/monitor/Clients"));
        assert!(filter_matches(
            "$aws/things/+/shadow/get/+",
            "$aws/things/t/shadow/get/accepted"
        ));
    }

    #[test]
    fn malformed_inputs_never_match() {
        assert!(!filter_matches("a/b#", "a/b#"));
        assert!(!filter_matches("a/+", "a/+"));
        assert!(!filter_matches("", ""));
        assert!(!filter_matches("#", "a\0"));
    }

    #[test]
    fn shared_subscriptions() {
        assert_eq!(
            parse_subscription("$share/workers/jobs/+/run"),
            Ok(Subscription {
                share_group: Some("workers".into()),
                filter: "jobs/+/run".into()
            })
        );
        assert_eq!(
            parse_subscription("$share/g/#"),
            Ok(Subscription {
                share_group: Some("g".into()),
                filter: "#".into()
            })
        );
        assert_eq!(
            parse_subscription("a/b"),
            Ok(Subscription {
                share_group: None,
                filter: "a/b".into()
            })
        );
        assert_eq!(
            parse_subscription("$share//a"),
            Err(TopicError::EmptyShareGroup)
        );
        assert_eq!(
            parse_subscription("$share/"),
            Err(TopicError::EmptyShareGroup)
        );
        assert_eq!(
            parse_subscription("$share/g"),
            Err(TopicError::MissingShareFilter { group: "g".into() })
        );
        assert_eq!(
            parse_subscription("$share/g/"),
            Err(TopicError::MissingShareFilter { group: "g".into() })
        );
        assert_eq!(
            parse_subscription("$share/g+/a"),
            Err(TopicError::BadShareGroup { group: "g+".into() })
        );
        assert_eq!(
            parse_subscription("$share/g/a#"),
            Err(TopicError::HashNotLast {
                level: 0,
                text: "a#".into()
            })
        );
        // Without the separator it is an ordinary filter that happens to start with `$`.
        assert_eq!(
            parse_subscription("$shared"),
            Ok(Subscription {
                share_group: None,
                filter: "$shared".into()
            })
        );
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec("[a-zA-Z0-9_$ -]{0,4}", 1..6)
            .prop_map(|levels| levels.join("/"))
            .prop_filter("a topic name is never empty", |t| !t.is_empty())
    }

    proptest! {
        #[test]
        fn every_topic_matches_hash_unless_it_is_a_dollar_topic(t in topic()) {
            prop_assert_eq!(filter_matches("#", &t), !t.starts_with('$'));
        }

        #[test]
        fn a_topic_matches_itself_as_a_filter(t in topic()) {
            prop_assert!(filter_matches(&t, &t));
        }

        #[test]
        fn a_level_replaced_by_plus_still_matches(t in topic(), pick in any::<prop::sample::Index>()) {
            let mut levels: Vec<&str> = t.split('/').collect();
            let i = pick.index(levels.len());
            levels[i] = "+";
            let filter = levels.join("/");
            let expected = !(i == 0 && t.starts_with('$'));
            prop_assert_eq!(filter_matches(&filter, &t), expected);
        }

        #[test]
        fn a_trailing_hash_matches_the_prefix_and_below(t in topic(), cut in any::<prop::sample::Index>()) {
            let levels: Vec<&str> = t.split('/').collect();
            let keep = cut.index(levels.len()) + 1;
            let filter = format!("{}/#", levels[..keep].join("/"));
            prop_assert!(filter_matches(&filter, &t));
        }

        #[test]
        fn matching_never_panics(f in "\\PC{0,24}|[a+#/$\0]{0,12}", t in "\\PC{0,24}|[a+#/$\0]{0,12}") {
            let _ = filter_matches(&f, &t);
            let _ = parse_subscription(&f);
        }
    }
}
