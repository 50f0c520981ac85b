//! libavcodec's messages reach the `log` crate (target `libav`), not stderr
//! (src/vpu/codec/avlog.rs). Its own test binary: a process has one `log`
//! logger, installed here.

use std::sync::Mutex;

use gstrsvpu::vpu::codec::h264::H264Decoder;

static RECORDS: Mutex<Vec<(log::Level, String, String)>> = Mutex::new(Vec::new());

struct Capture;

impl log::Log for Capture {
    fn enabled(&self, _: &log::Metadata) -> bool {
        true
    }
    fn log(&self, record: &log::Record) {
        RECORDS.lock().unwrap().push((
            record.level(),
            record.target().to_owned(),
            record.args().to_string(),
        ));
    }
    fn flush(&self) {}
}

#[test]
fn a_slice_without_parameter_sets_is_reported_through_log() {
    log::set_logger(&Capture).unwrap();
    log::set_max_level(log::LevelFilter::Trace);
    let mut dec = H264Decoder::new(1).expect("libavcodec's H.264 decoder");
    // An IDR slice NAL with no SPS/PPS before it: libavcodec complains at
    // error level that the PPS it names does not exist.
    let au = [0, 0, 0, 1, 0x65, 0x88, 0x84, 0x00, 0x33, 0xff, 0xc0, 0x10];
    let _ = dec.send(&au, 0);
    dec.send_eof();
    while let Some(r) = dec.receive() {
        let _ = r;
    }
    let records = RECORDS.lock().unwrap().clone();
    let libav: Vec<_> = records.iter().filter(|r| r.1 == "libav").collect();
    assert!(
        libav
            .iter()
            .any(|(level, _, text)| *level == log::Level::Error && text.contains("PPS")),
        "libavcodec's error about the missing PPS as a log record: {records:?}"
    );
    assert!(
        libav
            .iter()
            .all(|(_, _, text)| !text.ends_with('\n') && !text.is_empty()),
        "{libav:?}"
    );
}
