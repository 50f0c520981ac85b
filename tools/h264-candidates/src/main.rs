//! Decodes the Annex-B H.264 files of make-streams.sh with libavcodec
//! (ffmpeg-next, 1 and 2 frame threads) and with Cisco's openh264 (the openh264
//! crate, built from source with nasm), compares every I420 frame with
//! avdec_h264's and times the codec calls (best of 3; CPU from /proc/self/stat).
use std::time::Instant;

fn access_units(data: &[u8]) -> Vec<&[u8]> {
    // Split before each AUD (x264enc writes one per access unit).
    let mut starts = Vec::new();
    let mut i = 0;
    while i + 4 <= data.len() {
        if data[i] == 0 && data[i + 1] == 0 && data[i + 2] == 1 {
            let s = if i > 0 && data[i - 1] == 0 { i - 1 } else { i };
            if data[i + 3] & 0x1f == 9 {
                starts.push(s);
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    starts.push(data.len());
    starts.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

fn cpu() -> f64 {
    let s = std::fs::read_to_string("/proc/self/stat").unwrap();
    let f: Vec<&str> = s.rsplit(')').next().unwrap().split_whitespace().collect();
    (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / 100.0
}

fn frame_size(w: usize, h: usize) -> usize {
    w * h * 3 / 2
}

fn run_ffmpeg(aus: &[&[u8]], threads: usize, out: &mut Vec<Vec<u8>>) {
    use ffmpeg_next as ff;
    let codec = ff::decoder::find(ff::codec::Id::H264).unwrap();
    let mut ctx = ff::codec::context::Context::new_with_codec(codec);
    ctx.set_threading(ff::threading::Config {
        kind: ff::threading::Type::Frame,
        count: threads,
        ..Default::default()
    });
    let mut dec = ctx.decoder().video().unwrap();
    let mut frame = ff::frame::Video::empty();
    let mut take = |dec: &mut ff::decoder::Video, out: &mut Vec<Vec<u8>>| {
        while dec.receive_frame(&mut frame).is_ok() {
            let (w, h) = (frame.width() as usize, frame.height() as usize);
            let mut v = Vec::with_capacity(frame_size(w, h));
            for p in 0..3 {
                let (pw, ph) = if p == 0 { (w, h) } else { (w / 2, h / 2) };
                let st = frame.stride(p);
                let d = frame.data(p);
                for r in 0..ph {
                    v.extend_from_slice(&d[r * st..r * st + pw]);
                }
            }
            out.push(v);
        }
    };
    for (n, au) in aus.iter().enumerate() {
        let mut pkt = ff::Packet::copy(au);
        pkt.set_pts(Some(n as i64));
        dec.send_packet(&pkt).unwrap();
        take(&mut dec, out);
    }
    dec.send_eof().unwrap();
    take(&mut dec, out);
}

fn run_openh264(aus: &[&[u8]], out: &mut Vec<Vec<u8>>) {
    use openh264::decoder::Decoder;
    use openh264::formats::YUVSource;
    let mut dec = Decoder::new().unwrap();
    let push = |y: &openh264::decoder::DecodedYUV, out: &mut Vec<Vec<u8>>| {
        let (w, h) = y.dimensions();
        let mut v = Vec::with_capacity(frame_size(w, h));
        let (ys, us, vs) = y.strides();
        for r in 0..h {
            v.extend_from_slice(&y.y()[r * ys..r * ys + w]);
        }
        for r in 0..h / 2 {
            v.extend_from_slice(&y.u()[r * us..r * us + w / 2]);
        }
        for r in 0..h / 2 {
            v.extend_from_slice(&y.v()[r * vs..r * vs + w / 2]);
        }
        out.push(v);
    };
    for au in aus {
        match dec.decode(au) {
            Ok(Some(y)) => push(&y, out),
            Ok(None) => {}
            Err(e) => eprintln!("openh264: {e}"),
        }
    }
    for y in dec.flush_remaining().unwrap_or_default() {
        push(&y, out);
    }
}

/// A decoder under test: fills the vector with I420 frames.
type Candidate<'a> = Box<dyn Fn(&mut Vec<Vec<u8>>) + 'a>;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let dir = &args[1];
    for size in ["1280x720", "1920x1080"] {
        for prof in ["constrained-baseline", "main", "high"] {
            let data = std::fs::read(format!("{dir}/{prof}-{size}.h264")).unwrap();
            let reference = std::fs::read(format!("{dir}/{prof}-{size}.avdec.yuv")).unwrap();
            let aus = access_units(&data);
            let (w, h): (usize, usize) = {
                let mut it = size.split('x').map(|s| s.parse().unwrap());
                (it.next().unwrap(), it.next().unwrap())
            };
            let fs = frame_size(w, h);
            let refs: Vec<&[u8]> = reference.chunks(fs).collect();
            let cands: Vec<(&str, Candidate)> = vec![
                (
                    "libavcodec 1 thread",
                    Box::new(|o: &mut Vec<Vec<u8>>| run_ffmpeg(&aus, 1, o)),
                ),
                (
                    "libavcodec 2 threads",
                    Box::new(|o: &mut Vec<Vec<u8>>| run_ffmpeg(&aus, 2, o)),
                ),
                (
                    "openh264 crate",
                    Box::new(|o: &mut Vec<Vec<u8>>| run_openh264(&aus, o)),
                ),
            ];
            for (name, f) in cands {
                let mut best = f64::MAX;
                let mut best_cpu = 0.0;
                let mut frames = Vec::new();
                for _ in 0..3 {
                    frames.clear();
                    let (t, c) = (Instant::now(), cpu());
                    f(&mut frames);
                    let el = t.elapsed().as_secs_f64();
                    if el < best {
                        best = el;
                        best_cpu = cpu() - c;
                    }
                }
                let first_diff = frames
                    .iter()
                    .zip(&refs)
                    .position(|(a, b)| a.as_slice() != *b);
                let exact = frames.len() == refs.len() && first_diff.is_none();
                println!(
                    "{prof:21} {size:9} {name:22} frames {:3}/{:3} identical={} first-diff={:?} fps={:.0} cpu-s/frame={:.4}",
                    frames.len(),
                    refs.len(),
                    exact,
                    first_diff,
                    frames.len() as f64 / best,
                    best_cpu / frames.len().max(1) as f64
                );
            }
        }
    }
}
