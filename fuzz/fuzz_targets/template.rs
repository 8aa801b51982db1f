//! AWS IoT provisioning templates: parsing an untrusted template body and
//! running it, once with only the declared defaults and once with every
//! declared parameter and certificate built-in supplied.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use onramp_domain::template::{
    ExistingThing, MAX_TEMPLATE_CHARS, PolicyPlan, ProvisioningTemplate, apply_thing_overrides,
    evaluate,
};

const BUILT_INS: [&str; 8] = [
    "AWS::IoT::Certificate::Id",
    "AWS::IoT::Certificate::CommonName",
    "AWS::IoT::Certificate::SerialNumber",
    "AWS::IoT::Certificate::Country",
    "AWS::IoT::Certificate::Organization",
    "AWS::IoT::Certificate::OrganizationalUnit",
    "AWS::IoT::Certificate::DistinguishedNameQualifier",
    "AWS::IoT::Certificate::StateName",
];

fn run(template: &ProvisioningTemplate, parameters: &BTreeMap<String, String>) {
    let result = evaluate(template, parameters);
    // Evaluation is a pure function of its inputs.
    assert_eq!(result, evaluate(template, parameters));
    let Ok(plan) = result else {
        return;
    };
    if let Some(thing) = &plan.thing {
        assert!(!thing.thing_name.is_empty());
        // A thing that already matches the plan stays as it is, whatever the overrides.
        let same = ExistingThing {
            attributes: thing.attributes.clone(),
            thing_type: thing.thing_type.clone(),
            thing_groups: thing.thing_groups.clone(),
        };
        assert_eq!(apply_thing_overrides(&same, thing).as_ref(), Ok(&same));
        let _ = apply_thing_overrides(&ExistingThing::default(), thing);
    }
    if let Some(cert) = &plan.certificate {
        assert!(!cert.certificate_id.is_empty());
    }
    for policy in &plan.policies {
        if let PolicyPlan::Document { document, .. } = policy {
            assert!(
                document.starts_with('{') && document.ends_with('}'),
                "{document}"
            );
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(body) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(template) = ProvisioningTemplate::parse(body) else {
        return;
    };
    assert!(body.chars().count() <= MAX_TEMPLATE_CHARS);

    let mut parameters = BTreeMap::new();
    run(&template, &parameters);

    for name in template.parameters().keys() {
        parameters.insert(name.clone(), "fuzz,value".to_string());
    }
    for name in BUILT_INS {
        parameters.insert(name.to_string(), "0,1".to_string());
    }
    run(&template, &parameters);
});
