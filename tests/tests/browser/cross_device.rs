//! Two devices, two browsers: a passkey registered in Chromium on device A signs in with Chromium on device B
//! once the paired daemons have synced it. Each browser has its own profile (user-data-dir) and its own
//! native-messaging host talking to its own device's daemon; the relying party is one web server.

use std::time::{Duration, Instant};

use passmesh_tests::mesh::{self, all_connected, eventually};
use passmesh_tests::ops;
use passmesh_tests::rp::User;

use crate::server::{Event, RpServer};
use crate::{Action, STEP, answer_prompt, bounded, browser_for, expect_signed_in, report_stage};

/// Bound on the sync from A to B.
const SYNC: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passkey_registered_in_the_browser_on_one_device_signs_in_on_another() {
    // Build the daemon binaries first, so that the timings below are the test's own.
    passmesh_tests::binaries().unwrap_or_else(|e| panic!("{e:#}"));
    let started = Instant::now();
    let mut nodes = mesh::paired(2)
        .await
        .unwrap_or_else(|e| panic!("pairing failed: {e:#}"));
    let b = nodes.pop().expect("two nodes");
    let mut a = nodes.pop().expect("two nodes");
    let mut rp = RpServer::start(User::new("alice"))
        .await
        .expect("rp server");

    bounded(async {
        all_connected(&[&a, &b], SYNC).await?;
        // Device A: register on the site.
        let mut browser_a = browser_for(&a.daemon).await;
        browser_a.open(&rp.page("localhost", "register")).await?;
        let prompt = answer_prompt(&mut browser_a, &mut rp, Action::Approve(None)).await?;
        assert_eq!(prompt.title, "Create a passkey for localhost", "{prompt:?}");
        let registered = match rp.next_event(STEP).await? {
            Event::Registered { credential, checks } => {
                crate::assert_all_checks_pass("registration", &checks);
                credential.cred_id.to_vec()
            }
            other => anyhow::bail!("expected a verified registration, got {other:?}"),
        };
        let done = rp.next_event(STEP).await?;
        assert_eq!(report_stage(&done), Some("done"), "{done:?}");
        drop(browser_a);

        // The daemons sync it; then device A goes away, so only B can answer.
        let mut cb = b.daemon.client().await?;
        let registered_at = started.elapsed();
        eventually(SYNC, "the browser's passkey on B", async || {
            let list = ops::list(&mut cb, Some("localhost")).await.ok()?;
            list.iter()
                .any(|p| p.credential_id.0 == registered)
                .then_some(())
        })
        .await?;
        a.daemon.stop().await?;

        // Device B: sign in on the same site with the synced passkey.
        let mut browser_b = browser_for(&b.daemon).await;
        browser_b.open(&rp.page("localhost", "login")).await?;
        let prompt = answer_prompt(&mut browser_b, &mut rp, Action::Approve(None)).await?;
        assert_eq!(prompt.title, "Sign in to localhost", "{prompt:?}");
        assert_eq!(prompt.passkeys.len(), 1, "{prompt:?}");
        assert!(prompt.passkeys[0].contains("alice"), "{prompt:?}");
        expect_signed_in(&mut rp).await?;
        // B's daemon answered: its copy now also knows another device (A) holds it.
        let listed = ops::list(&mut cb, Some("localhost")).await?;
        assert!(
            listed
                .iter()
                .any(|p| p.credential_id.0 == registered && p.backed_up),
            "{listed:?}"
        );
        eprintln!(
            "cross-device browser test: registered on A after {registered_at:?}, signed in on B after {:?}",
            started.elapsed()
        );
        Ok(())
    })
    .await;
}
