//! Sign-in: limits per user name and per source address (429 with Retry-After, even with the
//! right password), which end with their window.

use crate::harness::{client_from, start, ROOT_PASSWORD};

#[tokio::test]
async fn failed_signins_lock_the_user_and_the_source_but_no_one_else() {
    let m = start(|c| {
        c.auth.signin_failures_per_user = 3;
        c.auth.signin_failures_per_source = 6;
        c.auth.signin_window_secs = 600;
    })
    .await;
    let (one, two) = (client_from("127.0.0.1"), client_from("127.0.0.2"));
    for _ in 0..3 {
        assert_eq!(m.signin_with(&one, "root", "wrong").await.status(), 401);
    }
    let r = m.signin_with(&one, "root", ROOT_PASSWORD).await;
    assert_eq!(r.status(), 429, "locked even with the right password");
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=600).contains(&after), "{after}");
    let msg = r.text().await.unwrap();
    assert!(
        msg.contains("too many failed sign-ins for this user"),
        "{msg}"
    );
    // The user name is locked from every address.
    assert_eq!(
        m.signin_with(&two, "root", ROOT_PASSWORD).await.status(),
        429
    );
    // Another user from the same address is not.
    assert_eq!(m.signin_with(&one, "alice", "wrong").await.status(), 401);
    assert_eq!(m.signin_with(&one, "bob", "wrong").await.status(), 401);
    // Six attempts from 127.0.0.1 so far (the refused ones do not count): its limit.
    assert_eq!(m.signin_with(&one, "carol", "wrong").await.status(), 401);
    let r = m.signin_with(&one, "dave", "wrong").await;
    assert_eq!(r.status(), 429);
    assert!(r.text().await.unwrap().contains("from this address"));
    // Another address is not.
    assert_eq!(m.signin_with(&two, "dave", "wrong").await.status(), 401);
}

#[tokio::test]
async fn parallel_guesses_get_exactly_the_limit() {
    let m = start(|c| {
        c.auth.signin_failures_per_user = 1000;
        c.auth.signin_failures_per_source = 10;
        c.auth.signin_window_secs = 600;
        c.auth.max_concurrent_hashes = 2;
    })
    .await;
    let one = client_from("127.0.0.1");
    let answers = futures::future::join_all((0..50).map(|i| {
        let (m, one) = (&m, &one);
        async move {
            m.signin_with(one, &format!("user{i}"), "wrong")
                .await
                .status()
                .as_u16()
        }
    }))
    .await;
    let count = |code| answers.iter().filter(|a| **a == code).count();
    assert_eq!((count(401), count(429)), (10, 40), "{answers:?}");
    let healthy = one.get(format!("{}/healthy", m.url)).send().await.unwrap();
    assert_eq!(healthy.status(), 200);
}

#[tokio::test]
async fn the_lock_ends_with_its_window() {
    let m = start(|c| {
        c.auth.signin_failures_per_user = 1;
        c.auth.signin_window_secs = 2;
    })
    .await;
    let one = client_from("127.0.0.1");
    assert_eq!(m.signin_with(&one, "root", "wrong").await.status(), 401);
    let r = m.signin_with(&one, "root", ROOT_PASSWORD).await;
    assert_eq!(r.status(), 429);
    let after: u64 = r.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(after)).await;
    let r = m.signin_with(&one, "root", ROOT_PASSWORD).await;
    assert_eq!(
        r.status(),
        200,
        "after Retry-After the right password works"
    );
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
}
