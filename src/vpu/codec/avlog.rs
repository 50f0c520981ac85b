//! libav* messages (libavcodec, and libx264 inside it) as `log` records.
//!
//! FFmpeg's default log callback writes to stderr: a corrupt H.264 frame
//! would print "error while decoding MB ..." lines into the terminal of a
//! `gst-launch-1.0` user, and libx264 its banner and statistics. [`init`]
//! routes each message into a `log` record with target `libav` instead (the
//! plugin routes `log` into the `rsvpu` debug category, so
//! `GST_DEBUG=rsvpu:4` shows them), as gst-libav routes them into its own
//! `libav` category. Levels: FFmpeg's panic, fatal and error -> error,
//! warning -> warn, info -> info, verbose -> debug, debug and trace ->
//! trace; FFmpeg produces nothing above info (its per-macroblock debug
//! output), and a message is formatted only when its level is enabled.
//!
//! FFmpeg has one callback per process. gst-libav, once loaded, installs
//! its own: whichever was installed last receives every libav message of
//! the process, ours and avdec_h264's alike. Either way they reach
//! GStreamer's debug log rather than stderr.

use ffmpeg_next::ffi;

use crate::sys::{AvLogSink, route_av_log};

/// The `log` target of libav messages.
pub const TARGET: &str = "libav";

/// Routes libav's messages into `log`, once per process.
pub fn init() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        route_av_log(
            ffi::AV_LOG_INFO,
            AvLogSink {
                enabled: |av| {
                    let level = level(av);
                    level <= log::max_level()
                        && log::logger()
                            .enabled(&log::Metadata::builder().level(level).target(TARGET).build())
                },
                sink: |av, text| log::log!(target: TARGET, level(av), "{text}"),
            },
        )
    });
}

fn level(av: i32) -> log::Level {
    match av {
        l if l <= ffi::AV_LOG_ERROR => log::Level::Error,
        l if l <= ffi::AV_LOG_WARNING => log::Level::Warn,
        l if l <= ffi::AV_LOG_INFO => log::Level::Info,
        l if l <= ffi::AV_LOG_VERBOSE => log::Level::Debug,
        _ => log::Level::Trace,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_from_ffmpeg_to_log() {
        assert_eq!(level(ffi::AV_LOG_PANIC), log::Level::Error);
        assert_eq!(level(ffi::AV_LOG_ERROR), log::Level::Error);
        assert_eq!(level(ffi::AV_LOG_WARNING), log::Level::Warn);
        assert_eq!(level(ffi::AV_LOG_INFO), log::Level::Info);
        assert_eq!(level(ffi::AV_LOG_VERBOSE), log::Level::Debug);
        assert_eq!(level(ffi::AV_LOG_DEBUG), log::Level::Trace);
    }
}
