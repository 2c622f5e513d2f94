//! Request line → [`Route`], as a pure function. Handlers never look at paths.

use super::error::ApiError;
use crate::protocol::Imei;
use hyper::Method;

/// Every endpoint the server answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// An embedded web asset (`""` is the page itself).
    Asset(String),
    Devices,
    Device(Imei),
    Positions(Imei),
    Track(Imei, TrackFormat),
    Events,
    /// `GET /api/live`: the Server-Sent Events stream (served by `serve`, which owns
    /// the connection a stalled stream must be able to close).
    Live,
    HealthLive,
    HealthReady,
    /// Prometheus text exposition of the frame and connection counters.
    Metrics,
}

/// File formats of a track export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TrackFormat {
    Gpx,
    GeoJson,
    Csv,
}

impl Route {
    /// The variant's name: the `route` label of the HTTP metrics (a bounded set; the
    /// IMEI or asset path is never part of it).
    pub fn label(&self) -> &'static str {
        match self {
            Route::Asset(_) => "Asset",
            Route::Devices => "Devices",
            Route::Device(_) => "Device",
            Route::Positions(_) => "Positions",
            Route::Track(..) => "Track",
            Route::Events => "Events",
            Route::Live => "Live",
            Route::HealthLive => "HealthLive",
            Route::HealthReady => "HealthReady",
            Route::Metrics => "Metrics",
        }
    }

    /// Maps method and path (without the query) to a route, or says why not.
    pub fn parse(method: &Method, path: &str) -> Result<Route, ApiError> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let route = match segments.as_slice() {
            ["api", "devices"] => Route::Devices,
            ["api", "devices", imei] => Route::Device(parse_imei(imei)?),
            ["api", "devices", imei, "positions"] => Route::Positions(parse_imei(imei)?),
            ["api", "devices", imei, file] if file.starts_with("track.") => {
                let format = match &file["track.".len()..] {
                    "gpx" => TrackFormat::Gpx,
                    "geojson" => TrackFormat::GeoJson,
                    "csv" => TrackFormat::Csv,
                    _ => return Err(ApiError::NotFound(path.to_string())),
                };
                Route::Track(parse_imei(imei)?, format)
            }
            ["api", "events"] => Route::Events,
            ["api", "live"] => Route::Live,
            ["health", "live"] => Route::HealthLive,
            ["health", "ready"] => Route::HealthReady,
            ["metrics"] => Route::Metrics,
            ["api", ..] | ["health", ..] => return Err(ApiError::NotFound(path.to_string())),
            _ => {
                let asset = path.trim_start_matches('/');
                if asset.split('/').any(|s| s == ".." || s.is_empty()) && !asset.is_empty() {
                    return Err(ApiError::NotFound(path.to_string()));
                }
                Route::Asset(asset.to_string())
            }
        };
        match *method {
            Method::GET | Method::HEAD => Ok(route),
            _ => Err(ApiError::MethodNotAllowed),
        }
    }
}

fn parse_imei(s: &str) -> Result<Imei, ApiError> {
    Imei::parse(s).ok_or_else(|| ApiError::BadParam {
        param: "imei",
        problem: format!("`{s}` is not a 15-digit IMEI"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(p: &str) -> Result<Route, ApiError> {
        Route::parse(&Method::GET, p)
    }

    #[test]
    fn api_paths_map_to_routes() {
        let imei = Imei::parse("864717003283581").unwrap();
        assert_eq!(get("/api/devices").unwrap(), Route::Devices);
        assert_eq!(
            get("/api/devices/864717003283581").unwrap(),
            Route::Device(imei)
        );
        assert_eq!(
            get("/api/devices/864717003283581/positions").unwrap(),
            Route::Positions(imei)
        );
        assert_eq!(get("/health/ready").unwrap(), Route::HealthReady);
        assert_eq!(get("/api/live").unwrap(), Route::Live);
        assert_eq!(get("/metrics").unwrap(), Route::Metrics);
        assert_eq!(
            get("/api/devices/864717003283581/track.gpx").unwrap(),
            Route::Track(imei, TrackFormat::Gpx)
        );
        assert!(matches!(
            get("/api/devices/864717003283581/track.kml"),
            Err(ApiError::NotFound(_))
        ));
        assert_eq!(get("/").unwrap(), Route::Asset(String::new()));
        assert_eq!(
            get("/vendor/leaflet/leaflet.js").unwrap(),
            Route::Asset("vendor/leaflet/leaflet.js".into())
        );
    }

    #[test]
    fn bad_imei_names_the_parameter() {
        match get("/api/devices/12345") {
            Err(ApiError::BadParam { param, .. }) => assert_eq!(param, "imei"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn unknown_api_path_and_traversal_are_not_found() {
        assert!(matches!(get("/api/nope"), Err(ApiError::NotFound(_))));
        assert!(matches!(get("/../etc/passwd"), Err(ApiError::NotFound(_))));
    }

    #[test]
    fn writes_are_refused() {
        assert!(matches!(
            Route::parse(&Method::POST, "/api/devices"),
            Err(ApiError::MethodNotAllowed)
        ));
    }
}
