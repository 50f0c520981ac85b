//! Routes the `log` crate into GStreamer's debug system.
//!
//! Everything below `plugins/` (the m2m contract, the emulated VPU, the memory
//! model, v4l2r itself) logs through the `log` crate and knows nothing of
//! GStreamer. At plugin init, [`install`] makes gstreamer-rs's
//! [`gst::DebugCategoryLogger`] the process-wide `log` logger, so those records
//! land in the debug category `rsvpu` and are switched on like any other:
//! `GST_DEBUG=rsvpu:6` (per-buffer detail is at trace level, 7).
//!
//! Levels map error -> ERROR, warn -> WARNING, info -> INFO, debug -> DEBUG,
//! trace -> TRACE. Each message carries the record's source file, line and
//! module path (in the function field of the GStreamer log line).
//!
//! `log`'s own maximum level is set to `Trace` and filtering is left to the
//! category: its threshold is read for every record (one field read), and it
//! can change at run time (`gst_debug_set_threshold_for_name`), which a copy
//! cached in `log::set_max_level` would miss.
//!
//! A process has one `log` logger. If the application installed its own first,
//! it keeps it, our records go there, and `log`'s maximum level stays the
//! application's choice.

use std::sync::{LazyLock, OnceLock};

/// The debug category that receives every `log` record of the process.
static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "rsvpu",
        gst::DebugColorFlags::empty(),
        Some("rsvpu driver, VPU and memory layers (log crate records)"),
    )
});

static LOGGER: LazyLock<gst::DebugCategoryLogger> =
    LazyLock::new(|| gst::DebugCategoryLogger::new(*CAT));

/// Whether the first [`install`] made our logger the process's `log` logger.
static INSTALLED: OnceLock<bool> = OnceLock::new();

/// Makes the `rsvpu` category the process's `log` logger, once; later calls
/// return the first call's result. Returns `false` when another logger was
/// there first (it stays, and keeps receiving our records).
pub(crate) fn install() -> bool {
    *INSTALLED.get_or_init(|| match log::set_logger(&*LOGGER) {
        Ok(()) => {
            log::set_max_level(log::LevelFilter::Trace);
            true
        }
        Err(_) => {
            gst::info!(
                CAT,
                "another `log` logger is installed: log records go to it, not to this category"
            );
            false
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;

    use gst::DebugLevel;

    use super::*;

    #[test]
    fn log_records_reach_the_rsvpu_category_above_its_threshold() {
        gst::init().unwrap();
        assert!(install(), "another logger took the place of the bridge");
        assert!(install(), "a second install must report the first result");
        let cat = gst::DebugCategory::get("rsvpu").expect("category rsvpu is registered");
        assert_eq!(cat, *CAT);

        // Other tests may log concurrently: keep only this test's records.
        let marker = "log_bridge test record";
        let (tx, rx) = mpsc::channel();
        let handler = gst::log::add_log_function(
            move |category, level, _file, function, _line, _obj, msg| {
                let text = msg.get().map(|m| m.to_string()).unwrap_or_default();
                if category == *CAT && text.starts_with(marker) {
                    let record = (level, function.to_string(), text);
                    tx.send(record).unwrap();
                }
            },
        );

        let threshold_before = cat.threshold();
        cat.set_threshold(DebugLevel::Debug);
        log::error!("{marker}: error");
        log::warn!("{marker}: warn");
        log::info!("{marker}: info");
        log::debug!("{marker}: debug");
        log::trace!("{marker}: trace, below the threshold");
        cat.set_threshold(DebugLevel::Trace);
        log::trace!("{marker}: trace");
        gst::log::remove_log_function(handler);
        cat.set_threshold(threshold_before);

        let got: Vec<_> = rx.try_iter().collect();
        let module = module_path!().to_string();
        let expected = [
            (DebugLevel::Error, "error"),
            (DebugLevel::Warning, "warn"),
            (DebugLevel::Info, "info"),
            (DebugLevel::Debug, "debug"),
            (DebugLevel::Trace, "trace"),
        ]
        .map(|(level, what)| (level, module.clone(), format!("{marker}: {what}")));
        assert_eq!(got, expected);
    }
}
