//! Registering the plugin makes the `rsvpu` debug category the process's `log`
//! logger (plugins/common/log_bridge.rs). Its own test binary: a process has
//! one `log` logger, installed by the first plugin_init.

use std::sync::mpsc;

#[test]
fn plugin_init_routes_log_records_into_the_rsvpu_category() {
    gst::init().unwrap();
    gstrsvpu::plugin_register_static().expect("registering the rsvpu plugin");
    let cat = gst::DebugCategory::get("rsvpu").expect("plugin_init registers category rsvpu");

    let (tx, rx) = mpsc::channel();
    let handler =
        gst::log::add_log_function(move |category, level, _file, _function, _line, _obj, msg| {
            if category == cat {
                let text = msg.get().map(|m| m.to_string()).unwrap_or_default();
                tx.send((level, text)).unwrap();
            }
        });
    cat.set_threshold(gst::DebugLevel::Warning);
    log::warn!("through the plugin's logger");
    gst::log::remove_log_function(handler);

    let got: Vec<_> = rx.try_iter().collect();
    assert_eq!(
        got,
        [(
            gst::DebugLevel::Warning,
            "through the plugin's logger".to_string()
        )]
    );
}
