//! The routes over the bundled tiny model, called in process (tower's `oneshot`, no socket):
//! `/v1/scene` equals the library's answer for the same inputs (JSON and multipart), a second
//! question on an image hits the frame cache, and every limit and malformed input gets its
//! 4xx in the OpenAI error shape. The OpenAI client, streaming, disconnects, load and shutdown
//! are tested against a real server in serve/tests/test_openai.py (make serve-test).

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use base64::Engine as _;
use clap::Parser;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use st::engine::{Engine, GenerateOptions, SessionOptions};
use st_serve::images::ImageSources;
use st_serve::{AppState, ServeArgs, router};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use tower::ServiceExt;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

const QUESTION: &str = "Is the cat left of the table?";
const OPTIONS: [&str; 2] = ["yes", "no"];

/// The tiny model, loaded once for every test (its export is cached in ST_CACHE_DIR).
fn engine() -> Engine {
    // Engine is Send but not Sync: the shared one sits behind a lock, each test takes a clone.
    static ENGINE: Mutex<Option<Engine>> = Mutex::new(None);
    let mut e = ENGINE.lock().unwrap();
    e.get_or_insert_with(|| {
        let opts = SessionOptions { threads: Some(1), ..Default::default() };
        Engine::open(&root().join("tests/fixtures/models/tiny"), &opts).expect("the tiny model loads")
    })
    .clone()
}

fn state(extra: &[&str], api_key: Option<&str>) -> Arc<AppState> {
    let args = ServeArgs::parse_from(["st serve"].iter().chain(extra));
    let sources = ImageSources { max_bytes: args.max_image_bytes, local_dir: None };
    Arc::new(AppState::new(&engine(), "tiny".into(), api_key, sources, &args))
}

fn chelsea() -> Vec<u8> {
    std::fs::read(root().join("tests/fixtures/images/chelsea.png")).unwrap()
}

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

async fn call(s: &Arc<AppState>, req: Request<Body>) -> (StatusCode, Value, axum::http::HeaderMap) {
    let response = router(Arc::clone(s)).oneshot(req).await.unwrap();
    let (status, headers) = (response.status(), response.headers().clone());
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, body, headers)
}

fn post(path: &str, body: &Value) -> Request<Body> {
    Request::post(path).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap()
}

fn scene_body() -> Value {
    json!({"image": b64(&chelsea()), "question": QUESTION, "options": OPTIONS, "max_new_tokens": 200,
        "observe_tokens": 16, "think_tokens": 16})
}

fn chat_body(content: Value) -> Value {
    json!({"model": "tiny", "max_tokens": 64, "messages": [{"role": "user", "content": content}]})
}

fn image_part(bytes: &[u8]) -> Value {
    json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{}", b64(bytes))}})
}

/// The same question through the library: what `/v1/scene` must answer.
fn library_answer() -> Value {
    let mut e = engine();
    let frame = e.encode_bytes(&chelsea(), "image").unwrap();
    let opts = GenerateOptions {
        max_new_tokens: Some(200),
        bounds: st::decode::grammar::Bounds { observe_tokens: 16, think_tokens: 16, ..Default::default() },
        ..Default::default()
    };
    let a = e.ask(&frame, "Is the cat left of the table? (A) yes (B) no", &opts).unwrap();
    a.to_json(&frame, e.model())
}

fn same_answer(got: &Value, want: &Value) {
    for field in ["raw", "token_ids", "answer", "scene", "valid", "prompt_tokens", "image", "model"] {
        assert_eq!(got[field], want[field], "{field}");
    }
}

#[tokio::test]
async fn the_scene_endpoint_answers_as_the_library_and_caches_the_frame() {
    let s = state(&[], None);
    let want = library_answer();
    let (status, got, _) = call(&s, post("/v1/scene", &scene_body())).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    same_answer(&got, &want);
    assert_eq!(got["valid"], true);
    // The same image again: its frame comes from the cache, the answer is the same.
    let (_, again, _) = call(&s, post("/v1/scene", &scene_body())).await;
    same_answer(&again, &want);
    assert!(again["reused_prompt_tokens"].as_u64().unwrap() > 0);
    let metrics = s.metrics.render();
    assert!(metrics.contains("st_frame_cache_hits_total 1\n"), "{metrics}");
    assert!(metrics.contains("st_frame_cache_misses_total 1\n"), "{metrics}");
    assert!(metrics.contains("st_requests_total{route=\"/v1/scene\",status=\"200\"} 2"), "{metrics}");
}

#[tokio::test]
async fn a_multipart_upload_answers_as_the_json_form() {
    let s = state(&[], None);
    let boundary = "st-boundary";
    let mut body = Vec::new();
    let text =
        |name: &str, v: &str| format!("--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{v}\r\n");
    for (k, v) in [
        ("question", QUESTION),
        ("options", "yes"),
        ("options", "no"),
        ("max_new_tokens", "200"),
        ("observe_tokens", "16"),
        ("think_tokens", "16"),
    ] {
        body.extend(text(k, v).as_bytes());
    }
    body.extend(
        format!("--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"chelsea.png\"\r\nContent-Type: image/png\r\n\r\n")
            .as_bytes(),
    );
    body.extend(chelsea());
    body.extend(format!("\r\n--{boundary}--\r\n").as_bytes());
    let req = Request::post("/v1/scene")
        .header(header::CONTENT_TYPE, format!("multipart/form-data; boundary={boundary}"))
        .body(Body::from(body))
        .unwrap();
    let (status, got, _) = call(&s, req).await;
    assert_eq!(status, StatusCode::OK, "{got}");
    same_answer(&got, &library_answer());
}

#[tokio::test]
async fn chat_completions_carry_the_typed_answer_and_usage() {
    let s = state(&[], None);
    let mut body = chat_body(
        json!([image_part(&chelsea()), {"type": "text", "text": "Is the cat left of the table? (A) yes (B) no"}]),
    );
    body["max_tokens"] = json!(200);
    body["st"] = json!({"observe_tokens": 16, "think_tokens": 16});
    let (status, v, _) = call(&s, post("/v1/chat/completions", &body)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let want = library_answer();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], want["raw"]);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let n = want["token_ids"].as_array().unwrap().len();
    assert_eq!(v["usage"]["completion_tokens"], n);
    assert_eq!(v["usage"]["total_tokens"].as_u64(), Some(want["prompt_tokens"].as_u64().unwrap() + n as u64));
    same_answer(&v["st"], &want);
    // Text only, through the chat template as it is.
    let mut text = chat_body(json!("Say hello."));
    text["st"] = json!({"template": "chat"});
    text["max_tokens"] = json!(8);
    let (status, v, _) = call(&s, post("/v1/chat/completions", &text)).await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 8);
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert!(v.get("st").is_none());
}

/// A PNG whose header claims more pixels than the decoder accepts (it is small on disk).
fn too_wide_png() -> Vec<u8> {
    let img = image::GrayImage::new(16_385, 1);
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png).unwrap();
    out.into_inner()
}

async fn expect_error(
    s: &Arc<AppState>,
    req: Request<Body>,
    status: StatusCode,
    param: Option<&str>,
    code: Option<&str>,
) -> String {
    let (got, body, _) = call(s, req).await;
    assert_eq!(got, status, "{body}");
    let e = &body["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(e["type"].is_string(), "{body}");
    if let Some(p) = param {
        assert_eq!(e["param"], p, "{body}");
    }
    if let Some(c) = code {
        assert_eq!(e["code"], c, "{body}");
    }
    e["message"].as_str().unwrap_or_default().to_string()
}

#[tokio::test]
async fn every_limit_and_malformed_input_is_a_4xx_in_the_openai_shape() {
    let s = state(&["--max-body-bytes", "400000", "--max-image-bytes", "300000"], None);
    let bad = StatusCode::BAD_REQUEST;
    let raw = |path: &str, body: &str| {
        Request::post(path).header(header::CONTENT_TYPE, "application/json").body(Body::from(body.to_string())).unwrap()
    };
    expect_error(&s, raw("/v1/chat/completions", "{not json"), bad, None, Some("invalid_json")).await;
    expect_error(&s, raw("/v1/chat/completions", r#"{"messages": []}"#), bad, None, Some("invalid_json")).await;
    expect_error(&s, raw("/v1/scene", r#"{"question": 3}"#), bad, None, Some("invalid_json")).await;
    // Body above --max-body-bytes; image above --max-image-bytes.
    let huge = json!({"image": "A".repeat(500_000), "question": "q"});
    expect_error(&s, post("/v1/scene", &huge), StatusCode::PAYLOAD_TOO_LARGE, None, Some("request_too_large")).await;
    let big = json!({"image": b64(&vec![0u8; 290_000]), "question": "q"});
    expect_error(
        &s,
        post("/v1/scene", &json!({"image": b64(&vec![0u8; 301_000]), "question": "q"})),
        StatusCode::PAYLOAD_TOO_LARGE,
        None,
        None,
    )
    .await;
    let m = expect_error(&s, post("/v1/scene", &big), bad, Some("image"), None).await;
    assert!(m.contains("image"), "{m}"); // not an image: the decoder's error
    let s2 = state(&["--max-image-bytes", "1000"], None);
    let m = expect_error(&s2, post("/v1/scene", &scene_body()), bad, Some("image"), None).await;
    assert!(m.contains("--max-image-bytes"), "{m}");
    // Pixels above the decoder's limits, told from the header.
    let wide = json!({"image": b64(&too_wide_png()), "question": "q"});
    let m = expect_error(&s, post("/v1/scene", &wide), bad, Some("image"), None).await;
    assert!(m.contains("16384") || m.contains("16385"), "{m}");
    // max_tokens against the context.
    let mut body = chat_body(json!([image_part(&chelsea()), {"type": "text", "text": "q"}]));
    body["max_tokens"] = json!(1_000_000);
    let m = expect_error(&s, post("/v1/chat/completions", &body), bad, Some("max_tokens"), None).await;
    assert!(m.contains("context"), "{m}");
    // Unknown model; too many images; unsupported fields; no image under the SpatialThinker template.
    let mut body = chat_body(json!("hi"));
    body["model"] = json!("gpt-4o");
    expect_error(
        &s,
        post("/v1/chat/completions", &body),
        StatusCode::NOT_FOUND,
        Some("model"),
        Some("model_not_found"),
    )
    .await;
    let tiny_png = std::fs::read(root().join("tests/fixtures/images/tiny_1x1.png")).unwrap();
    let body = chat_body(json!([image_part(&tiny_png), image_part(&tiny_png), {"type": "text", "text": "q"}]));
    let m = expect_error(&s, post("/v1/chat/completions", &body), bad, Some("messages"), None).await;
    assert!(m.contains("too many images"), "{m}");
    let mut body = chat_body(json!("hi"));
    body["n"] = json!(3);
    expect_error(&s, post("/v1/chat/completions", &body), bad, Some("n"), Some("unsupported_parameter")).await;
    let m = expect_error(&s, post("/v1/chat/completions", &chat_body(json!("hi"))), bad, Some("messages"), None).await;
    assert!(m.contains("needs an image"), "{m}");
    let body = chat_body(json!([{"type": "image_url", "image_url": {"url": "file:///etc/passwd"}}]));
    let m = expect_error(&s, post("/v1/chat/completions", &body), bad, Some("messages"), None).await;
    assert!(m.contains("--allow-local-files"), "{m}");
    let empty = json!({"image": b64(&tiny_png), "question": "   "});
    expect_error(&s, post("/v1/scene", &empty), bad, Some("messages"), None).await;
    // No such route.
    let req = Request::get("/v1/nope").body(Body::empty()).unwrap();
    expect_error(&s, req, StatusCode::NOT_FOUND, None, Some("not_found")).await;
    // The server still answers after all that.
    let (status, v, _) = call(&s, post("/v1/scene", &scene_body())).await;
    assert_eq!((status, &v["valid"]), (StatusCode::OK, &json!(true)));
}

#[tokio::test]
async fn the_api_key_guards_v1_but_not_health() {
    let s = state(&[], Some("sekrit"));
    let models = |auth: Option<&str>| {
        let mut r = Request::get("/v1/models");
        if let Some(a) = auth {
            r = r.header(header::AUTHORIZATION, a);
        }
        r.body(Body::empty()).unwrap()
    };
    let unauthorized = StatusCode::UNAUTHORIZED;
    expect_error(&s, models(None), unauthorized, None, Some("invalid_api_key")).await;
    expect_error(&s, models(Some("Bearer wrong")), unauthorized, None, Some("invalid_api_key")).await;
    expect_error(&s, models(Some("sekrit")), unauthorized, None, Some("invalid_api_key")).await;
    let (status, v, _) = call(&s, models(Some("Bearer sekrit"))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["data"][0]["id"], "tiny");
    let (status, v, _) = call(&s, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!((status, &v["status"]), (StatusCode::OK, &json!("ok")));
}

#[tokio::test]
async fn a_full_queue_answers_503_with_retry_after_and_never_waits() {
    let s = state(&["--workers", "1", "--queue", "1"], None);
    let mut long = chat_body(json!("Count to a thousand."));
    long["st"] = json!({"template": "chat"});
    long["max_tokens"] = json!(1500);
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let s = Arc::clone(&s);
        let body = long.clone();
        tasks.push(tokio::spawn(async move { call(&s, post("/v1/chat/completions", &body)).await }));
    }
    let mut busy = 0;
    for t in tasks {
        let (status, body, headers) = t.await.unwrap();
        match status {
            StatusCode::OK => assert_eq!(body["usage"]["completion_tokens"], 1500),
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert_eq!(headers[header::RETRY_AFTER], "1");
                assert_eq!(body["error"]["code"], "server_busy");
            }
            other => panic!("{other}: {body}"),
        }
    }
    // One worker and one queue slot: of four at once, at least two are refused.
    assert!(busy >= 2, "{busy} refused");
    let (_, v, _) = call(&s, Request::get("/health").body(Body::empty()).unwrap()).await;
    assert_eq!((v["queue_depth"].as_i64(), v["busy_workers"].as_i64()), (Some(0), Some(0)), "{v}");
}

/// The `data:` payloads of a server-sent event stream.
fn sse_data(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
}

#[tokio::test]
async fn a_stream_carries_every_token_then_done() {
    let s = state(&[], None);
    let mut body = chat_body(
        json!([image_part(&chelsea()), {"type": "text", "text": "Is the cat left of the table? (A) yes (B) no"}]),
    );
    body["max_tokens"] = json!(200);
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    body["st"] = json!({"observe_tokens": 16, "think_tokens": 16});
    let response = router(Arc::clone(&s)).oneshot(post("/v1/chat/completions", &body)).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let data = sse_data(&String::from_utf8_lossy(&bytes));
    assert_eq!(data.last().map(String::as_str), Some("[DONE]"));
    let chunks: Vec<Value> = data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"].get(0).and_then(|ch| ch["delta"]["content"].as_str()).map(str::to_string))
        .collect();
    let want = library_answer();
    assert_eq!(text, want["raw"].as_str().unwrap());
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(usage["completion_tokens"], want["token_ids"].as_array().unwrap().len());
}

#[tokio::test]
async fn a_client_dropping_the_stream_stops_its_generation() {
    let s = state(&[], None);
    let mut body = chat_body(json!("Count to a million."));
    body["st"] = json!({"template": "chat"});
    body["max_tokens"] = json!(4000);
    body["stream"] = json!(true);
    let response = router(Arc::clone(&s)).oneshot(post("/v1/chat/completions", &body)).await.unwrap();
    let mut stream = response.into_body();
    for _ in 0..3 {
        stream.frame().await.unwrap().unwrap();
    }
    drop(stream);
    // The worker notices at its next token; wait for it to finish.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while s.metrics.busy_workers.get() > 0 || s.metrics.generated_tokens.get() == 0 {
        assert!(std::time::Instant::now() < deadline, "the generation did not stop");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let generated = s.metrics.generated_tokens.get();
    assert!(generated < 4000, "{generated} tokens generated for a client that left");
}
