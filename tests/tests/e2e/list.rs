//! `list` pages: a vault of any size is listed in frames under the 1 MiB cap, oldest first.

use passmesh_ipc::{RequestBody, ResponseBody};
use passmesh_tests::ops;
use passmesh_tests::rp::User;

use crate::{client, daemon, example_rp, register_user};

async fn page(
    c: &mut passmesh_ipc::Client,
    offset: u64,
    limit: u32,
) -> (Vec<passmesh_ipc::PasskeyInfo>, u64) {
    match c
        .call(RequestBody::List {
            rp_id: None,
            offset,
            limit: Some(limit),
        })
        .await
        .expect("list page")
    {
        ResponseBody::List { passkeys, total } => (passkeys, total),
        other => panic!("unexpected reply {other:?}"),
    }
}

#[tokio::test]
async fn list_pages_cover_the_vault_in_creation_order() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            register_user(&mut c, &rp, &format!("user{i}"))
                .await
                .id()
                .to_vec(),
        );
    }

    let (p1, total) = page(&mut c, 0, 2).await;
    let (p2, _) = page(&mut c, 2, 2).await;
    let (p3, _) = page(&mut c, 4, 2).await;
    let (p4, _) = page(&mut c, 5, 2).await;
    assert_eq!(total, 5);
    assert_eq!((p1.len(), p2.len(), p3.len(), p4.len()), (2, 2, 1, 0));
    let paged: Vec<Vec<u8>> = p1
        .iter()
        .chain(&p2)
        .chain(&p3)
        .map(|p| p.credential_id.0.clone())
        .collect();
    assert_eq!(
        paged, ids,
        "pages are in creation order, without gaps or repeats"
    );

    // A limit above the maximum is clamped, not an error; the client helper fetches everything.
    let (all, total) = page(&mut c, 0, u32::MAX).await;
    assert_eq!((all.len(), total), (5, 5));
    assert_eq!(ops::list(&mut c, None).await.expect("list").len(), 5);
}

#[tokio::test]
async fn long_user_names_are_stored_truncated_to_64_bytes() {
    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let mut user = User::new("alice");
    user.name = "a".repeat(300);
    user.display_name = "é".repeat(100);
    let (creation, _) = rp
        .begin_registration(&user, &Default::default())
        .expect("options");
    ops::create(&mut c, rp.origin(), creation, None)
        .await
        .expect("create with long names");
    let listed = ops::list(&mut c, None).await.expect("list");
    assert_eq!(listed[0].user_name, "a".repeat(64));
    assert_eq!(listed[0].user_display_name, "é".repeat(32));
}

#[tokio::test]
async fn registering_the_same_account_again_replaces_its_passkey() {
    use passmesh_ipc::ErrorName;
    use passmesh_tests::ops::expect_error;
    use passmesh_tests::rp::UserVerificationPolicy;

    let d = daemon().await;
    let mut c = client(&d).await;
    let rp = example_rp();
    let first = register_user(&mut c, &rp, "alice").await;
    let bob = register_user(&mut c, &rp, "bob").await;
    let second = register_user(&mut c, &rp, "alice").await;
    assert_ne!(first.id(), second.id());

    let listed: Vec<Vec<u8>> = ops::list(&mut c, None)
        .await
        .expect("list")
        .into_iter()
        .map(|p| p.credential_id.0)
        .collect();
    assert_eq!(listed, vec![bob.id().to_vec(), second.id().to_vec()]);

    // The old key is gone for good; the new one signs.
    let (request, _) = rp
        .begin_authentication(
            std::slice::from_ref(&first.credential),
            UserVerificationPolicy::Preferred,
        )
        .expect("request options");
    expect_error(
        ops::get(&mut c, rp.origin(), request, None).await,
        ErrorName::NotAllowedError,
    );
    crate::sign_in(
        &mut c,
        &rp,
        &[&second],
        &[&second],
        UserVerificationPolicy::Preferred,
        None,
    )
    .await;
}
