//! The Prometheus endpoint: `GET /metrics` answered with whatever the component renders.

use std::net::SocketAddr;

/// Serves `/metrics` on `addr` with `render`'s text until the task is dropped.
pub async fn serve<F>(addr: SocketAddr, render: F) -> std::io::Result<()>
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let render = render.clone();
            async move { render() }
        }),
    );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving Prometheus metrics on /metrics");
    axum::serve(listener, app).await
}

/// [`serve`] in the background; a failure (the address in use, say) is logged with what to
/// change.
pub fn spawn<F>(addr: SocketAddr, render: F)
where
    F: Fn() -> String + Clone + Send + Sync + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = serve(addr, render).await {
            tracing::error!(%addr, error = %e, "metrics endpoint failed; is the address in use? set metrics.address in the config");
        }
    });
}

#[cfg(test)]
mod tests {
    #[tokio::test]
    async fn serves_what_render_returns() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        super::spawn(addr, || "x_total 1\n".to_owned());
        let text = loop {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                break out;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        assert!(text.ends_with("x_total 1\n"), "{text}");
    }
}
