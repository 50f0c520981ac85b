//! Decoders for the codecs a kernel node offers beyond FWHT and H.264:
//! `vpuh265dec`, `vpuvp8dec` and `vpuvp9dec`.
//!
//! The emulated VPU has none of these codecs, so an element only makes
//! sense where a kernel V4L2 stateful decoder offers the codec: at plugin
//! init, [`plan`] looks at discovery's nodes ([`crate::v4l2::discovery`])
//! and registers an element per codec found, with the sink caps the nodes
//! report (the codec's media type with the frame sizes of
//! `VIDIOC_ENUM_FRAMESIZES`) and src caps from their raw CAPTURE formats.
//! Without such a node nothing is registered, so decodebin never picks an
//! element that cannot run.
//!
//! Each element is a thin subclass of the shared decoder
//! ([`crate::decoder`]), taking one coded frame per buffer (`alignment=au`
//! for H.265 from h265parse; VP8/VP9 frames as demuxers give them). Its
//! `device` defaults to `auto`, i.e. the first node decoding the codec;
//! `device=emu` fails to start with the emulated VPU's "no decoder for
//! HEVC" (or VP80/VP90) error.
//!
//! Rank `PRIMARY`: these elements have not run on a real H.265/VP8/VP9 node
//! yet (the test VM's vicodec is FWHT only and visl is stateless), so they
//! do not take precedence over GStreamer's own `v4l2*dec` (`PRIMARY + 1`)
//! for such a node; raise it once checked on hardware.

mod imp;

use std::sync::OnceLock;

use gst::glib;

use crate::common::formats;
use crate::m2m::{PixelFormat, Role};
use crate::v4l2::discovery::{CodecNode, NodeFormat};

/// An element to register: its codec and the caps its nodes report.
#[derive(Debug, Clone)]
pub(crate) struct Planned {
    pub element: &'static str,
    pub pixel_format: PixelFormat,
    /// The codec's media type, with the nodes' frame sizes.
    pub sink: gst::Caps,
    /// Raw formats the nodes list on CAPTURE (GStreamer-named ones).
    pub raw: Vec<PixelFormat>,
}

/// Raw formats for a node that lists none before it knows the stream (the
/// stateful decoder spec allows that): the usual outputs of VPU decoders.
/// What the stream really decodes to is the node's answer at the source
/// change; downstream is asked again then.
const FALLBACK_RAW: [PixelFormat; 4] = [
    PixelFormat::Nv12,
    PixelFormat::I420,
    PixelFormat::Yv12,
    PixelFormat::Nv21,
];

/// Which of this module's elements `nodes` call for, with their caps: one
/// per codec for which some node is a stateful decoder, caps merged over
/// every such node, in discovery order.
pub(crate) fn plan(nodes: &[CodecNode]) -> Vec<Planned> {
    imp::CODECS
        .iter()
        .filter_map(|codec| {
            let pf = codec.pixel_format;
            let decoders: Vec<&CodecNode> = nodes
                .iter()
                .filter(|n| n.supports(Role::Decoder, pf))
                .collect();
            if decoders.is_empty() {
                return None;
            }
            let mut sink = gst::Caps::new_empty();
            let mut raw: Vec<PixelFormat> = Vec::new();
            for node in &decoders {
                for coded in node
                    .coded
                    .iter()
                    .filter(|c| c.format == NodeFormat::Known(pf))
                {
                    if let Some(caps) =
                        crate::deviceprovider::caps::coded_caps(coded.format, coded.sizes)
                    {
                        sink.merge(caps);
                    }
                }
                for f in node.raw.iter().filter_map(|f| f.known()) {
                    if !f.is_coded() && formats::video_format(f).is_some() && !raw.contains(&f) {
                        raw.push(f);
                    }
                }
            }
            if raw.is_empty() {
                raw = FALLBACK_RAW.to_vec();
            }
            Some(Planned {
                element: codec.element,
                pixel_format: pf,
                sink,
                raw,
            })
        })
        .collect()
}

/// What plugin init planned, read by the elements' pad templates.
static PLANNED: OnceLock<Vec<Planned>> = OnceLock::new();

fn planned(element: &str) -> Option<&'static Planned> {
    PLANNED.get()?.iter().find(|p| p.element == element)
}

/// Registers the elements discovery's nodes call for (none without such a
/// node). Returns the names registered.
pub(crate) fn register(plugin: &gst::Plugin) -> Result<Vec<&'static str>, glib::BoolError> {
    let plans = PLANNED.get_or_init(|| plan(crate::v4l2::discovery::nodes()));
    register_planned(Some(plugin), plans)
}

/// Registers the elements of `plans` (what [`PLANNED`] holds: their pad
/// templates read it).
fn register_planned(
    plugin: Option<&gst::Plugin>,
    plans: &[Planned],
) -> Result<Vec<&'static str>, glib::BoolError> {
    let mut done = Vec::new();
    for p in plans {
        let type_ = imp::element_type(p.pixel_format)
            .ok_or_else(|| glib::bool_error!("no element type for {}", p.pixel_format))?;
        let codec = imp::CODECS
            .iter()
            .copied()
            .find(|c| c.pixel_format == p.pixel_format)
            .ok_or_else(|| glib::bool_error!("no codec for {}", p.pixel_format))?;
        crate::decoder::register_api();
        crate::decoder::register_codec(type_, codec);
        log::info!(
            "registering {}: a kernel node decodes {} ({} -> {:?})",
            p.element,
            p.pixel_format,
            p.sink,
            p.raw
        );
        gst::Element::register(plugin, p.element, gst::Rank::PRIMARY, type_)?;
        done.push(p.element);
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use std::str::FromStr;

    use gst::prelude::*;

    use super::*;
    use crate::m2m::format::fourcc;
    use crate::v4l2::discovery::{CodedFormat, SizeRange};

    fn node(
        path: &str,
        role: Role,
        coded: &[(&[u8; 4], Option<SizeRange>)],
        raw: &[&[u8; 4]],
    ) -> CodecNode {
        CodecNode {
            path: path.into(),
            driver: "fake".into(),
            card: "fake".into(),
            bus_info: "platform:fake".into(),
            role,
            multiplanar: true,
            coded: coded
                .iter()
                .map(|(c, sizes)| CodedFormat {
                    format: NodeFormat::from_fourcc(fourcc(c)),
                    sizes: *sizes,
                })
                .collect(),
            raw: raw
                .iter()
                .map(|r| NodeFormat::from_fourcc(fourcc(r)))
                .collect(),
        }
    }

    fn sizes(max_w: u32, max_h: u32) -> Option<SizeRange> {
        Some(SizeRange {
            min_width: 48,
            max_width: max_w,
            step_width: 16,
            min_height: 48,
            max_height: max_h,
            step_height: 16,
        })
    }

    fn names(plans: &[Planned]) -> Vec<&'static str> {
        plans.iter().map(|p| p.element).collect()
    }

    #[test]
    fn nothing_is_registered_without_such_a_decoder_node() {
        gst::init().unwrap();
        assert!(plan(&[]).is_empty());
        // vicodec: FWHT only; an H.264 decoder is vpuh264dec's; an HEVC
        // and VP9 *encoder* is no decoder.
        let nodes = [
            node("/dev/video0", Role::Encoder, &[(b"FWHT", None)], &[b"YU12"]),
            node("/dev/video1", Role::Decoder, &[(b"FWHT", None)], &[b"YU12"]),
            node("/dev/video3", Role::Decoder, &[(b"H264", None)], &[b"NV12"]),
            node(
                "/dev/video4",
                Role::Encoder,
                &[(b"HEVC", None), (b"VP90", None)],
                &[b"NV12"],
            ),
            // A format we have no element for.
            node("/dev/video5", Role::Decoder, &[(b"AV01", None)], &[b"NV12"]),
        ];
        assert!(plan(&nodes).is_empty(), "{:?}", names(&plan(&nodes)));
    }

    #[test]
    fn a_node_decoding_hevc_vp8_and_vp9_makes_three_elements_with_its_caps() {
        gst::init().unwrap();
        // A Hantro/RKVDEC-like node: H.264 (vpuh264dec's), VP8, VP9, HEVC.
        let nodes = [node(
            "/dev/video7",
            Role::Decoder,
            &[
                (b"H264", sizes(1920, 1088)),
                (b"VP80", sizes(1920, 1088)),
                (b"VP90", sizes(4096, 2304)),
                (b"HEVC", sizes(4096, 2304)),
            ],
            &[b"NV12", b"NV24"],
        )];
        let plans = plan(&nodes);
        assert_eq!(names(&plans), ["vpuh265dec", "vpuvp8dec", "vpuvp9dec"]);
        let by = |e: &str| plans.iter().find(|p| p.element == e).unwrap();

        let h265 = &by("vpuh265dec").sink;
        let s = h265.structure(0).unwrap();
        assert_eq!(s.name(), "video/x-h265", "{h265}");
        assert_eq!(s.get::<&str>("stream-format").unwrap(), "byte-stream");
        assert_eq!(s.get::<&str>("alignment").unwrap(), "au");
        assert_eq!(
            s.get::<gst::IntRange<i32>>("width").unwrap(),
            gst::IntRange::new(48, 4096)
        );
        assert_eq!(
            s.get::<gst::IntRange<i32>>("height").unwrap(),
            gst::IntRange::new(48, 2304)
        );
        let vp8 = &by("vpuvp8dec").sink;
        assert_eq!(vp8.structure(0).unwrap().name(), "video/x-vp8");
        assert_eq!(
            vp8.structure(0)
                .unwrap()
                .get::<gst::IntRange<i32>>("width")
                .unwrap(),
            gst::IntRange::new(48, 1920)
        );
        assert_eq!(
            by("vpuvp9dec").sink.structure(0).unwrap().name(),
            "video/x-vp9"
        );
        // NV24 is no contract format: only NV12 is offered.
        for p in &plans {
            assert_eq!(p.raw, [PixelFormat::Nv12], "{}", p.element);
        }
    }

    #[test]
    fn caps_merge_over_nodes_and_a_node_without_raw_formats_gets_the_usual_ones() {
        gst::init().unwrap();
        let nodes = [
            node(
                "/dev/video7",
                Role::Decoder,
                &[(b"VP90", sizes(1920, 1088))],
                &[],
            ),
            node(
                "/dev/video9",
                Role::Decoder,
                &[(b"VP90", sizes(4096, 2304))],
                &[b"NV12", b"YU12"],
            ),
        ];
        let plans = plan(&nodes);
        assert_eq!(names(&plans), ["vpuvp9dec"]);
        assert_eq!(plans[0].raw, [PixelFormat::Nv12, PixelFormat::I420]);
        let only = plan(&nodes[..1]);
        assert_eq!(only[0].raw, FALLBACK_RAW);
        // Both size ranges are in the sink caps.
        let sink = &plans[0].sink;
        let fits = |w: i32, h: i32| {
            sink.can_intersect(
                &gst::Caps::builder("video/x-vp9")
                    .field("width", w)
                    .field("height", h)
                    .build(),
            )
        };
        assert!(fits(1920, 1080) && fits(3840, 2160), "{sink}");
        assert!(!fits(8192, 4320), "{sink}");
    }

    /// The elements as plugin init registers them for a fake HEVC + VP9
    /// node: pad templates with the node's caps, `device=auto` by default,
    /// and `device=emu` a clear error at start naming the codec.
    #[test]
    fn registered_elements_carry_the_planned_caps_and_emu_is_a_clear_error() {
        gst::init().unwrap();
        let nodes = [node(
            "/dev/video7",
            Role::Decoder,
            &[(b"HEVC", sizes(4096, 2304)), (b"VP90", sizes(4096, 2304))],
            &[b"NV12"],
        )];
        // The lib's tests never run plugin init, so this test owns PLANNED.
        let plans = PLANNED.get_or_init(|| plan(&nodes));
        assert_eq!(names(plans), ["vpuh265dec", "vpuvp9dec"]);
        assert_eq!(
            register_planned(None, plans).unwrap(),
            ["vpuh265dec", "vpuvp9dec"]
        );
        assert!(gst::ElementFactory::find("vpuvp8dec").is_none());
        for (name, media) in [("vpuh265dec", "video/x-h265"), ("vpuvp9dec", "video/x-vp9")] {
            let f = gst::ElementFactory::find(name).unwrap();
            assert_eq!(f.rank(), gst::Rank::PRIMARY);
            assert_eq!(f.metadata("klass"), Some("Codec/Decoder/Video/Hardware"));
            let templ = |dir| {
                f.static_pad_templates()
                    .into_iter()
                    .find(|t| t.direction() == dir)
                    .unwrap()
                    .caps()
            };
            let sink = templ(gst::PadDirection::Sink);
            assert_eq!(sink.structure(0).unwrap().name(), media, "{sink}");
            let src = templ(gst::PadDirection::Src);
            assert!(
                src.can_intersect(&gst::Caps::from_str("video/x-raw,format=NV12").unwrap()),
                "{src}"
            );
            assert!(
                !src.can_intersect(&gst::Caps::from_str("video/x-raw,format=I420").unwrap()),
                "only the node's formats: {src}"
            );

            let dec = f.create().build().unwrap();
            assert_eq!(dec.property::<String>("device"), "auto");
            dec.set_property("device", "emu");
            let pipeline = gst::Pipeline::new();
            pipeline.add(&dec).unwrap();
            assert!(pipeline.set_state(gst::State::Paused).is_err());
            let msg = pipeline
                .bus()
                .unwrap()
                .pop_filtered(&[gst::MessageType::Error])
                .expect("an error message");
            let gst::MessageView::Error(e) = msg.view() else {
                unreachable!()
            };
            let text = format!("{} {:?}", e.error(), e.debug());
            let fourcc = plans
                .iter()
                .find(|p| p.element == name)
                .unwrap()
                .pixel_format;
            assert!(
                text.contains("emu") && text.contains(&format!("no decoder for {fourcc}")),
                "{text}"
            );
            pipeline.set_state(gst::State::Null).unwrap();
        }
    }

    #[test]
    fn the_elements_have_their_codecs_and_emu_has_none_of_them() {
        for codec in imp::CODECS {
            let pf = codec.pixel_format;
            assert!(pf.is_coded());
            assert!(imp::element_type(pf).is_some(), "{pf}");
            let Err(e) = crate::common::device::open(
                &crate::common::device::DeviceChoice::Emulated,
                Role::Decoder,
                pf,
            ) else {
                panic!("the emulated VPU decodes {pf}?");
            };
            assert!(e.to_string().contains(&pf.to_string()), "{e}");
        }
    }
}
