//! The emulated VPU's H.264 decoder engine through the m2m contract (no
//! element): the SPS-driven source change (size, cropping, minimum CAPTURE
//! buffers), presentation-order output carrying each access unit's
//! timestamp, drain, and a stream it cannot decode exactly being refused
//! with a message. Streams come from x264enc.

use gst::prelude::*;
use gstrsvpu::m2m::blocking::BlockingDecoder;
use gstrsvpu::m2m::{Buffer, BufferFlags, Device, PixelFormat, QueueKind, Role};
use gstrsvpu::mem::Coherency;

/// x264enc access units (decode order) with their presentation timestamps.
fn encode(format: &str, w: u32, h: u32, frames: u32, extra: &str) -> Vec<(u64, Vec<u8>)> {
    gst::init().unwrap();
    let pipeline = gst::parse::launch(&format!(
        "videotestsrc num-buffers={frames} pattern=ball ! \
         video/x-raw,format={format},width={w},height={h},framerate=30/1 ! x264enc {extra} ! \
         video/x-h264,stream-format=byte-stream,alignment=au ! appsink name=sink sync=false"
    ))
    .unwrap()
    .downcast::<gst::Pipeline>()
    .unwrap();
    let sink = pipeline.by_name("sink").unwrap();
    pipeline.set_state(gst::State::Playing).unwrap();
    let mut units = Vec::new();
    while let Some(s) =
        sink.emit_by_name::<Option<gst::Sample>>("try-pull-sample", &[&10_000_000_000u64])
    {
        let b = s.buffer().unwrap();
        let pts = b.pts().unwrap().nseconds();
        units.push((pts, b.map_readable().unwrap().to_vec()));
    }
    pipeline.set_state(gst::State::Null).unwrap();
    units
}

struct Out {
    timestamp: u64,
    bytesused: usize,
    error: Option<String>,
}

fn decode(units: &[(u64, Vec<u8>)]) -> (Result<(), String>, Vec<Out>, BlockingDecoder) {
    let vpu = gstrsvpu::emulated_vpu().unwrap();
    let session = vpu.open(Role::Decoder, PixelFormat::H264).unwrap();
    let mut dec = BlockingDecoder::new(session, Coherency::Cacheable, 2, 1).unwrap();
    let mut out = Vec::new();
    let mut take = |b: &Buffer| {
        out.push(Out {
            timestamp: b.timestamp,
            bytesused: b.bytesused,
            error: b
                .flags
                .contains(BufferFlags::ERROR)
                .then(|| b.error.clone().unwrap_or_default()),
        });
        Ok(())
    };
    let mut result = Ok(());
    for (pts, data) in units {
        if let Err(e) = dec.decode(data, *pts, &mut take) {
            result = Err(e.to_string());
            break;
        }
    }
    if result.is_ok() {
        result = dec.finish(&mut take).map_err(|e| e.to_string());
    }
    (result, out, dec)
}

#[test]
fn source_change_presentation_order_and_drain() {
    let units = encode("I420", 330, 250, 20, "bframes=2 b-adapt=false");
    assert_eq!(units.len(), 20);
    let decode_order: Vec<u64> = units.iter().map(|(t, _)| *t).collect();
    let mut presentation = decode_order.clone();
    presentation.sort_unstable();
    assert_ne!(decode_order, presentation, "the stream has B-frames");

    let (result, out, dec) = decode(&units);
    result.unwrap();
    let format = dec.format().expect("a source change").clone();
    assert_eq!((format.width, format.height), (330, 250), "cropped size");
    assert_eq!(format.pixelformat, PixelFormat::I420);
    // DPB frames (from the SPS) + 1.
    let min = dec.session().min_buffers(QueueKind::Capture);
    assert!((2..=17).contains(&min), "min CAPTURE buffers {min}");
    assert!(out.iter().all(|o| o.error.is_none()));
    assert!(out.iter().all(|o| o.bytesused == format.size));
    let timestamps: Vec<u64> = out.iter().map(|o| o.timestamp).collect();
    assert_eq!(
        timestamps, presentation,
        "every picture, in presentation order"
    );
}

#[test]
fn a_stream_it_cannot_decode_exactly_is_refused_with_a_message() {
    let units = encode("Y42B", 320, 240, 3, "");
    let (result, out, _) = decode(&units);
    let err = result.expect_err("a 4:2:2 stream must not decode");
    assert!(err.contains("4:2:2"), "{err}");
    assert!(out.iter().all(|o| o.bytesused == 0), "no picture came out");
}
