//! End to end in real headless Chromium (WebDriver through `chromedriver`): log in with the
//! one-time link, upload a file through the page, see it listed, download it and compare the
//! bytes, share it, open the share link in a fresh browser profile and download it there.
//! Screenshots go to `target/web-artifacts/`.
//!
//! Needs the Debian packages `chromium` and `chromium-driver` (`scripts/setup` installs them);
//! without them the test says why and passes without running.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use cairn_node::WebConfig;
use cairn_testkit::{TestGrid, random_bytes};
use cairn_web::WebServer;
use fantoccini::{Client, ClientBuilder, Locator};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target"))
        .join("web-artifacts");
    std::fs::create_dir_all(&dir).expect("artifact dir");
    dir
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

/// A browser session with a fresh profile in `profile`.
async fn browser(driver: &str, profile: &Path) -> Client {
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        json!({
            "binary": CHROMIUM,
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                "--ignore-certificate-errors", "--window-size=1000,900",
                format!("--user-data-dir={}", profile.display()),
            ],
        }),
    );
    caps.insert("acceptInsecureCerts".into(), json!(true));
    ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
        .capabilities(caps)
        .connect(driver)
        .await
        .expect("a browser session")
}

/// Fetches `href` from inside the page (with the page's cookies) and returns the bytes.
async fn fetch_in_page(client: &Client, href: &str) -> Vec<u8> {
    const SCRIPT: &str = r#"
        const [href, done] = [arguments[0], arguments[arguments.length - 1]];
        fetch(href, { credentials: "same-origin" })
          .then((r) => { if (!r.ok) throw new Error("HTTP " + r.status); return r.arrayBuffer(); })
          .then((b) => {
            const u = new Uint8Array(b);
            let s = "";
            for (let i = 0; i < u.length; i += 0x8000) s += String.fromCharCode.apply(null, u.subarray(i, i + 0x8000));
            done(btoa(s));
          })
          .catch((e) => done("ERR " + e));
    "#;
    let got = client
        .execute_async(SCRIPT, vec![json!(href)])
        .await
        .expect("script runs");
    let text = got.as_str().expect("a string");
    assert!(!text.starts_with("ERR"), "{text}");
    data_encoding::BASE64
        .decode(text.as_bytes())
        .expect("base64")
}

async fn attr(client: &Client, css: &str, name: &str) -> String {
    client
        .find(Locator::Css(css))
        .await
        .expect("element")
        .attr(name)
        .await
        .expect("attribute")
        .unwrap_or_default()
}

async fn screenshot(client: &Client, name: &str) {
    let png = client.screenshot().await.expect("screenshot");
    assert!(png.starts_with(b"\x89PNG"));
    std::fs::write(artifacts().join(name), png).expect("write screenshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_user_logs_in_uploads_downloads_and_shares_in_chromium() {
    if !Path::new(CHROMIUM).exists() || !Path::new(CHROMEDRIVER).exists() {
        eprintln!(
            "skipped: {CHROMIUM} or {CHROMEDRIVER} is missing (install the Debian packages chromium and chromium-driver, as scripts/setup does)"
        );
        return;
    }
    tokio::time::timeout(Duration::from_secs(300), run())
        .await
        .expect("the browser test finished in time");
}

async fn run() {
    let grid = TestGrid::start(5).await;
    let server = WebServer::bind(grid.node(0).clone(), grid.dir(0), WebConfig::default())
        .await
        .expect("web server binds");
    let url = server.url().to_owned();
    let stop = CancellationToken::new();
    tokio::spawn(server.run(stop.clone()));

    let port = free_port();
    let mut driver = tokio::process::Command::new(CHROMEDRIVER)
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("chromedriver starts");
    let driver_url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let profiles = tempfile::tempdir().expect("profiles");
    let files = tempfile::tempdir().expect("files");

    // Log in with the one-time link.
    let owner = browser(&driver_url, &profiles.path().join("owner")).await;
    let login = cairn_web::login_url(grid.dir(0)).expect("login link");
    owner.goto(&login).await.expect("open the login link");
    owner
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#crumbs a"))
        .await
        .expect("the file list after login");
    let here = owner.current_url().await.expect("url");
    assert_eq!(
        here.as_str(),
        format!("{url}/"),
        "the token left the address bar"
    );

    // Upload through the file input, see the file listed.
    let data = random_bytes(11, 700_000);
    let local = files.path().join("holiday photo.bin");
    std::fs::write(&local, &data).expect("write");
    let second = files.path().join("notes.txt");
    std::fs::write(&second, "a second file, uploaded at once with the first").expect("write");
    owner
        .execute(
            "document.getElementById('file-input').hidden = false;",
            vec![],
        )
        .await
        .expect("show the input");
    owner
        .find(Locator::Css("#file-input"))
        .await
        .expect("file input")
        .send_keys(&format!("{}\n{}", local.display(), second.display()))
        .await
        .expect("choose two files");
    let link_css = "a.download[data-name='holiday photo.bin']";
    owner
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css(link_css))
        .await
        .expect("the uploaded file is listed");
    owner
        .wait()
        .at_most(Duration::from_secs(60))
        .for_element(Locator::Css("a.download[data-name='notes.txt']"))
        .await
        .expect("the second file is listed");
    let size_text = owner
        .find(Locator::Css("tr[data-name='holiday photo.bin'] td.num"))
        .await
        .expect("size cell")
        .text()
        .await
        .expect("text");
    assert_eq!(size_text, "683.6 KiB");

    // Download it through its link and compare.
    let href = attr(&owner, link_css, "href").await;
    assert!(href.starts_with("/api/files?path="), "{href}");
    assert!(
        fetch_in_page(&owner, &href).await == data,
        "downloaded bytes differ"
    );

    // Its health: one line per chunk, shares found / needed / total.
    owner
        .find(Locator::Css("button.health[data-name='holiday photo.bin']"))
        .await
        .expect("health button")
        .click()
        .await
        .expect("click health");
    owner
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#health tbody tr"))
        .await
        .expect("the health table");
    let first = owner
        .find(Locator::Css("#health tbody tr"))
        .await
        .expect("a row")
        .text()
        .await
        .expect("text");
    assert!(first.starts_with("manifest"), "{first}");
    owner
        .find(Locator::Css("#dialog button[value=close]"))
        .await
        .expect("close button")
        .click()
        .await
        .expect("close the dialog");

    // Share it: a link with the cap in the fragment, and a QR code.
    owner
        .find(Locator::Css("button.share[data-name='holiday photo.bin']"))
        .await
        .expect("share button")
        .click()
        .await
        .expect("click share");
    let share_input = owner
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#share-link"))
        .await
        .expect("the share dialog");
    let link = share_input
        .prop("value")
        .await
        .expect("value")
        .expect("a link");
    assert!(link.starts_with(&format!("{url}/s#cairn:chk:1:")), "{link}");
    for _ in 0..50 {
        if attr(&owner, "#share-qr", "src").await.starts_with("blob:") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        attr(&owner, "#share-qr", "src").await.starts_with("blob:"),
        "a QR code"
    );
    screenshot(&owner, "owner-share.png").await;

    // Close the dialog; the status page shows the peers.
    owner
        .find(Locator::Css("#dialog button[value=close]"))
        .await
        .expect("close button")
        .click()
        .await
        .expect("close the dialog");
    owner
        .find(Locator::Css("#tab-status"))
        .await
        .expect("tab")
        .click()
        .await
        .expect("click");
    owner
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#peers tbody tr"))
        .await
        .expect("peers listed");
    let grid_card = owner
        .find(Locator::Css("#st-grid"))
        .await
        .expect("grid card")
        .text()
        .await
        .expect("text");
    assert!(
        grid_card.contains("all members online") || grid_card.contains("offline:"),
        "{grid_card}"
    );
    assert!(grid_card.contains("storage nodes"), "{grid_card}");
    let activity = owner
        .find(Locator::Css("#st-activity"))
        .await
        .expect("activity card")
        .text()
        .await
        .expect("text");
    assert!(activity.contains("Shares served"), "{activity}");
    screenshot(&owner, "owner-status.png").await;
    // A phone-sized window.
    owner.set_window_size(390, 844).await.expect("resize");
    owner
        .find(Locator::Css("#tab-files"))
        .await
        .expect("tab")
        .click()
        .await
        .expect("click");
    owner
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(link_css))
        .await
        .expect("the files again");
    let overflow: Value = owner
        .execute(
            "return document.documentElement.scrollWidth > window.innerWidth + 1",
            vec![],
        )
        .await
        .expect("script");
    assert_eq!(overflow, json!(false), "the page fits a phone-width window");
    screenshot(&owner, "owner-phone.png").await;

    // A friend opens the link in a fresh profile, with no session, and downloads.
    let friend = browser(&driver_url, &profiles.path().join("friend")).await;
    friend.goto(&link).await.expect("open the share link");
    friend
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css("#file:not([hidden])"))
        .await
        .expect("the shared file");
    let name = friend
        .find(Locator::Css("#file-name"))
        .await
        .expect("name")
        .text()
        .await
        .expect("text");
    assert_eq!(name, "holiday photo.bin");
    let href = attr(&friend, "#file-download", "href").await;
    assert!(href.starts_with("/d/"), "{href}");
    assert!(
        fetch_in_page(&friend, &href).await == data,
        "shared bytes differ"
    );
    let session: Value = friend
        .execute("return fetch('/api/status').then(r => r.status)", vec![])
        .await
        .expect("script");
    assert_eq!(session, json!(401), "the friend has no session");
    screenshot(&friend, "friend-share.png").await;

    // A directory share link (the owner's root, read-only) lists the files for the friend.
    let dir_link: Value = owner
        .execute_async(
            r#"
            const done = arguments[arguments.length - 1];
            fetch("/api/session").then((r) => r.json()).then((s) =>
              fetch("/api/share", {
                method: "POST",
                headers: { "Content-Type": "application/json", "X-Cairn-CSRF": s.csrf },
                body: JSON.stringify({ path: "/" }),
              })).then((r) => r.json()).then((b) => done(b.link)).catch((e) => done("ERR " + e));
            "#,
            vec![],
        )
        .await
        .expect("script");
    let dir_link = dir_link.as_str().expect("a link").to_owned();
    assert!(
        dir_link.starts_with(&format!("{url}/s#cairn:dir-ro:1:")),
        "{dir_link}"
    );
    friend.goto(&dir_link).await.expect("open the folder link");
    friend
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(
            "#dir:not([hidden]) tr[data-name='notes.txt'] button.download",
        ))
        .await
        .expect("the shared folder's files");
    friend
        .find(Locator::Css("tr[data-name='holiday photo.bin']"))
        .await
        .expect("both files listed");
    screenshot(&friend, "friend-folder.png").await;

    friend.close().await.expect("close");
    owner.close().await.expect("close");
    let _ = driver.kill().await;
    stop.cancel();
    grid.shutdown().await;
}
