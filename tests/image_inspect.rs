//! One `docker image inspect` for all images of an apply (`Runtime::image_ids`), on the real
//! engine.

use smoker::runtime::Runtime;
use smoker_testkit::docker::require_docker;
use smoker_testkit::images::build_image_with;
use smoker_testkit::{Cleanup, unique_name};

#[test]
fn one_inspect_gives_every_id_in_order_or_none_when_one_is_missing() {
    require_docker();
    let mut cleanup = Cleanup::new();
    let a = cleanup.image(&format!("{}:a", unique_name("inspect")));
    let b = cleanup.image(&format!("{}:b", unique_name("inspect")));
    let a = build_image_with(&a, &[("which", "a")]);
    let b = build_image_with(&b, &[("which", "b")]);
    assert_ne!(a.id, b.id, "two images of their own");
    let runtime = Runtime::detect().expect("Docker and a compose front end");

    let refs = vec![b.tag.clone(), a.tag.clone(), b.tag.clone()];
    let ids = runtime.image_ids(&refs).expect("all three are present");
    assert_eq!(ids, vec![b.id.clone(), a.id.clone(), b.id.clone()]);
    // The same IDs as one inspect per reference.
    for (r, id) in refs.iter().zip(&ids) {
        assert_eq!(runtime.image_id(r).as_deref(), Some(id.as_str()), "{r}");
    }

    let missing = format!("{}:absent", unique_name("inspect"));
    assert_eq!(runtime.image_ids(&[a.tag.clone(), missing.clone()]), None);
    assert_eq!(runtime.image_id(&missing), None);
    assert_eq!(runtime.image_ids(&[]), Some(Vec::new()));
}
