//! FFmpeg's process-wide log callback (`av_log_set_callback`), behind a
//! safe interface: [`route_av_log`] hands every libav message to a plain
//! Rust function as text. The policy (levels, where the text goes) is the
//! caller's (`vpu::codec::avlog`).

use std::ffi::{CStr, c_char, c_int, c_void};
use std::sync::OnceLock;

use ffmpeg_next::ffi;

/// Where libav messages go: `enabled(level)` is asked first, so a message
/// nobody reads is not formatted; then `sink(level, text)` gets it, without
/// its trailing newline. Levels are FFmpeg's (`AV_LOG_*`).
#[derive(Clone, Copy)]
pub struct AvLogSink {
    pub enabled: fn(i32) -> bool,
    pub sink: fn(i32, &str),
}

static SINK: OnceLock<AvLogSink> = OnceLock::new();

/// Sets FFmpeg's log level to `max_level` and routes its messages to
/// `sink`. The first call decides the sink; later calls only set the level.
pub fn route_av_log(max_level: i32, sink: AvLogSink) {
    SINK.get_or_init(|| sink);
    // SAFETY: both calls only store a process-wide setting; `callback` has
    // the signature FFmpeg calls it with and may run on any thread.
    unsafe { ffi::av_log_set_level(max_level) };
    // SAFETY: as above.
    unsafe { ffi::av_log_set_callback(Some(callback)) };
}

unsafe extern "C" fn callback(
    avcl: *mut c_void,
    level: c_int,
    fmt: *const c_char,
    args: *mut ffi::__va_list_tag,
) {
    let Some(sink) = SINK.get() else { return };
    // SAFETY: a plain read of FFmpeg's level setting.
    if level > unsafe { ffi::av_log_get_level() } || fmt.is_null() || !(sink.enabled)(level) {
        return;
    }
    let mut line = [0 as c_char; 1024];
    let mut print_prefix: c_int = 1;
    // SAFETY: `avcl`, `fmt` and `args` are what av_log was given; the call
    // consumes `args` once (as vsnprintf does) and writes at most
    // `line.len()` bytes into `line`, NUL-terminated.
    unsafe {
        ffi::av_log_format_line2(
            avcl,
            level,
            fmt,
            args,
            line.as_mut_ptr(),
            line.len() as c_int,
            &mut print_prefix,
        )
    };
    // SAFETY: `line` is NUL-terminated (zeroed, and written NUL-terminated).
    let text = unsafe { CStr::from_ptr(line.as_ptr()) }.to_string_lossy();
    let text = text.trim_end();
    if !text.is_empty() {
        (sink.sink)(level, text);
    }
}
