//! Sequence parameter sets (H.264 7.3.2.1.1, E.1.1): what the stateful
//! decoder announces at a source change (coded and visible size, DPB size)
//! and what decides whether this VPU decodes the stream exactly (profile,
//! chroma format, bit depth).

use super::nal::{BitReader, BitstreamError, rbsp};

/// The fields of an SPS the VPU acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sps {
    pub profile_idc: u8,
    pub constraint_flags: u8,
    pub level_idc: u8,
    pub id: u32,
    pub chroma_format_idc: u32,
    pub bit_depth_luma: u32,
    pub bit_depth_chroma: u32,
    /// Coded size in pixels (whole macroblocks; both fields for interlaced).
    pub coded_width: u32,
    pub coded_height: u32,
    /// Visible rectangle after the frame cropping.
    pub crop_left: u32,
    pub crop_top: u32,
    pub width: u32,
    pub height: u32,
    pub frame_mbs_only: bool,
    pub max_num_ref_frames: u32,
    /// VUI `max_num_reorder_frames` / `max_dec_frame_buffering`, if present.
    pub max_num_reorder_frames: Option<u32>,
    pub max_dec_frame_buffering: Option<u32>,
    /// VUI colour description: (full range, primaries, transfer, matrix).
    pub video_signal: Option<(bool, u8, u8, u8)>,
}

/// Profiles with the high-profile SPS extension (chroma format, bit depth,
/// scaling matrices).
fn has_high_fields(profile_idc: u8) -> bool {
    matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    )
}

/// MaxDpbMbs of table A-1 for a level (level_idc 9, or 11 with
/// constraint_set3 in (constrained) baseline / main, is level 1b).
fn max_dpb_mbs(level_idc: u8, profile_idc: u8, constraint_flags: u8) -> u32 {
    let level_1b = level_idc == 9
        || (level_idc == 11 && constraint_flags & 0x10 != 0 && matches!(profile_idc, 66 | 77));
    if level_1b {
        return 396;
    }
    match level_idc {
        0..=10 => 396,
        11 => 900,
        12 | 13 | 20 => 2376,
        21 => 4752,
        22 | 30 => 8100,
        31 => 18000,
        32 => 20480,
        40 | 41 => 32768,
        42 => 34816,
        50 => 110400,
        51 | 52 => 184320,
        _ => 696320,
    }
}

fn skip_scaling_list(r: &mut BitReader<'_>, size: usize) -> Result<(), BitstreamError> {
    let (mut last, mut next) = (8i32, 8i32);
    for _ in 0..size {
        if next != 0 {
            let delta = r.se("delta_scale")?;
            next = (last + delta + 256).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Ok(())
}

fn skip_hrd(r: &mut BitReader<'_>) -> Result<(), BitstreamError> {
    let cpb_cnt = r.ue_max(31, "cpb_cnt_minus1", "0..=31")? + 1;
    r.bits(8, "bit_rate_scale/cpb_size_scale")?;
    for _ in 0..cpb_cnt {
        r.ue("bit_rate_value_minus1")?;
        r.ue("cpb_size_value_minus1")?;
        r.bit("cbr_flag")?;
    }
    r.bits(20, "hrd delay lengths")?;
    Ok(())
}

impl Sps {
    /// Parses an SPS NAL unit (with its one-byte NAL header).
    pub fn parse(nal: &[u8]) -> Result<Sps, BitstreamError> {
        let data = rbsp(nal.get(1..).unwrap_or_default());
        let mut r = BitReader::new(&data);
        let profile_idc = r.bits(8, "profile_idc")? as u8;
        let constraint_flags = r.bits(8, "constraint_set flags")? as u8;
        let level_idc = r.bits(8, "level_idc")? as u8;
        let id = r.ue_max(31, "seq_parameter_set_id", "0..=31")?;
        let (mut chroma_format_idc, mut bit_depth_luma, mut bit_depth_chroma) = (1, 8, 8);
        let mut separate_colour_plane = false;
        if has_high_fields(profile_idc) {
            chroma_format_idc = r.ue_max(3, "chroma_format_idc", "0..=3")?;
            if chroma_format_idc == 3 {
                separate_colour_plane = r.bit("separate_colour_plane_flag")?;
            }
            bit_depth_luma = r.ue_max(6, "bit_depth_luma_minus8", "0..=6")? + 8;
            bit_depth_chroma = r.ue_max(6, "bit_depth_chroma_minus8", "0..=6")? + 8;
            r.bit("qpprime_y_zero_transform_bypass_flag")?;
            if r.bit("seq_scaling_matrix_present_flag")? {
                let lists = if chroma_format_idc == 3 { 12 } else { 8 };
                for i in 0..lists {
                    if r.bit("seq_scaling_list_present_flag")? {
                        skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                    }
                }
            }
        }
        r.ue_max(12, "log2_max_frame_num_minus4", "0..=12")?;
        match r.ue_max(2, "pic_order_cnt_type", "0..=2")? {
            0 => {
                r.ue_max(12, "log2_max_pic_order_cnt_lsb_minus4", "0..=12")?;
            }
            1 => {
                r.bit("delta_pic_order_always_zero_flag")?;
                r.se("offset_for_non_ref_pic")?;
                r.se("offset_for_top_to_bottom_field")?;
                let n = r.ue_max(255, "num_ref_frames_in_pic_order_cnt_cycle", "0..=255")?;
                for _ in 0..n {
                    r.se("offset_for_ref_frame")?;
                }
            }
            _ => {}
        }
        let max_num_ref_frames = r.ue_max(16, "max_num_ref_frames", "0..=16")?;
        r.bit("gaps_in_frame_num_value_allowed_flag")?;
        let width_mbs = r.ue_max(1023, "pic_width_in_mbs_minus1", "0..=1023")? + 1;
        let height_map_units = r.ue_max(1023, "pic_height_in_map_units_minus1", "0..=1023")? + 1;
        let frame_mbs_only = r.bit("frame_mbs_only_flag")?;
        if !frame_mbs_only {
            r.bit("mb_adaptive_frame_field_flag")?;
        }
        r.bit("direct_8x8_inference_flag")?;
        let coded_width = width_mbs * 16;
        let coded_height = height_map_units * 16 * if frame_mbs_only { 1 } else { 2 };
        let (mut crop_left, mut crop_right, mut crop_top, mut crop_bottom) = (0, 0, 0, 0);
        if r.bit("frame_cropping_flag")? {
            crop_left = r.ue("frame_crop_left_offset")?;
            crop_right = r.ue("frame_crop_right_offset")?;
            crop_top = r.ue("frame_crop_top_offset")?;
            crop_bottom = r.ue("frame_crop_bottom_offset")?;
        }
        let chroma_array_type = if separate_colour_plane {
            0
        } else {
            chroma_format_idc
        };
        let (unit_x, unit_y) = match chroma_array_type {
            0 => (1, 1),
            1 => (2, 2),
            2 => (2, 1),
            _ => (1, 1),
        };
        let unit_y = unit_y * if frame_mbs_only { 1 } else { 2 };
        let crop_x = (u64::from(crop_left) + u64::from(crop_right)) * unit_x;
        let crop_y = (u64::from(crop_top) + u64::from(crop_bottom)) * unit_y;
        if crop_x >= u64::from(coded_width) || crop_y >= u64::from(coded_height) {
            return Err(BitstreamError::Range {
                what: "frame cropping",
                value: crop_x.max(crop_y),
                expected: "less than the coded size",
            });
        }
        let mut sps = Sps {
            profile_idc,
            constraint_flags,
            level_idc,
            id,
            chroma_format_idc,
            bit_depth_luma,
            bit_depth_chroma,
            coded_width,
            coded_height,
            crop_left: crop_left * unit_x as u32,
            crop_top: crop_top * unit_y as u32,
            width: coded_width - crop_x as u32,
            height: coded_height - crop_y as u32,
            frame_mbs_only,
            max_num_ref_frames,
            max_num_reorder_frames: None,
            max_dec_frame_buffering: None,
            video_signal: None,
        };
        if r.bit("vui_parameters_present_flag")? {
            // A VUI cut short is tolerated, as decoders do: the fields above
            // are what the stream needs.
            let _ = sps.parse_vui(&mut r);
        }
        Ok(sps)
    }

    fn parse_vui(&mut self, r: &mut BitReader<'_>) -> Result<(), BitstreamError> {
        if r.bit("aspect_ratio_info_present_flag")? && r.bits(8, "aspect_ratio_idc")? == 255 {
            r.bits(32, "sar")?;
        }
        if r.bit("overscan_info_present_flag")? {
            r.bit("overscan_appropriate_flag")?;
        }
        if r.bit("video_signal_type_present_flag")? {
            r.bits(3, "video_format")?;
            let full = r.bit("video_full_range_flag")?;
            let (mut p, mut t, mut m) = (2, 2, 2);
            if r.bit("colour_description_present_flag")? {
                p = r.bits(8, "colour_primaries")? as u8;
                t = r.bits(8, "transfer_characteristics")? as u8;
                m = r.bits(8, "matrix_coefficients")? as u8;
            }
            self.video_signal = Some((full, p, t, m));
        }
        if r.bit("chroma_loc_info_present_flag")? {
            r.ue("chroma_sample_loc_type_top_field")?;
            r.ue("chroma_sample_loc_type_bottom_field")?;
        }
        if r.bit("timing_info_present_flag")? {
            r.bits(32, "num_units_in_tick")?;
            r.bits(32, "time_scale")?;
            r.bit("fixed_frame_rate_flag")?;
        }
        let nal_hrd = r.bit("nal_hrd_parameters_present_flag")?;
        if nal_hrd {
            skip_hrd(r)?;
        }
        let vcl_hrd = r.bit("vcl_hrd_parameters_present_flag")?;
        if vcl_hrd {
            skip_hrd(r)?;
        }
        if nal_hrd || vcl_hrd {
            r.bit("low_delay_hrd_flag")?;
        }
        r.bit("pic_struct_present_flag")?;
        if r.bit("bitstream_restriction_flag")? {
            r.bit("motion_vectors_over_pic_boundaries_flag")?;
            r.ue("max_bytes_per_pic_denom")?;
            r.ue("max_bits_per_mb_denom")?;
            r.ue("log2_max_mv_length_horizontal")?;
            r.ue("log2_max_mv_length_vertical")?;
            self.max_num_reorder_frames = Some(r.ue_max(16, "max_num_reorder_frames", "0..=16")?);
            self.max_dec_frame_buffering =
                Some(r.ue_max(16, "max_dec_frame_buffering", "0..=16")?);
        }
        Ok(())
    }

    /// Frames the decoded picture buffer holds (A.3.1 h, or the VUI's
    /// `max_dec_frame_buffering`), at least one.
    pub fn dpb_frames(&self) -> u32 {
        if let Some(n) = self.max_dec_frame_buffering {
            return n.max(self.max_num_ref_frames).max(1);
        }
        let mbs = (self.coded_width / 16) * (self.coded_height / 16);
        let by_level =
            max_dpb_mbs(self.level_idc, self.profile_idc, self.constraint_flags) / mbs.max(1);
        by_level.clamp(self.max_num_ref_frames.max(1), 16)
    }

    /// The profile's name as GStreamer's caps spell it.
    pub fn profile_name(&self) -> &'static str {
        let c = self.constraint_flags;
        match self.profile_idc {
            66 if c & 0x40 != 0 => "constrained-baseline",
            66 => "baseline",
            77 => "main",
            88 => "extended",
            100 if c & 0x0c == 0x0c => "constrained-high",
            100 if c & 0x08 != 0 => "progressive-high",
            100 => "high",
            110 => "high-10",
            122 => "high-4:2:2",
            244 => "high-4:4:4",
            44 => "cavlc-4:4:4-intra",
            83 | 86 => "scalable",
            118 | 128 => "multiview",
            _ => "unknown",
        }
    }

    /// Why this VPU cannot decode the stream exactly, if it cannot: it
    /// outputs 8-bit 4:2:0 frames only.
    pub fn unsupported(&self) -> Option<String> {
        if self.chroma_format_idc != 1 || self.bit_depth_luma != 8 || self.bit_depth_chroma != 8 {
            return Some(format!(
                "H.264 {} profile stream with chroma format {} and {}/{}-bit samples: this VPU \
                 decodes 8-bit 4:2:0 only",
                self.profile_name(),
                match self.chroma_format_idc {
                    0 => "4:0:0",
                    1 => "4:2:0",
                    2 => "4:2:2",
                    _ => "4:4:4",
                },
                self.bit_depth_luma,
                self.bit_depth_chroma
            ));
        }
        if matches!(self.profile_idc, 88 | 83 | 86 | 118 | 128) {
            return Some(format!(
                "H.264 {} profile (profile_idc {}) is not decoded by this VPU",
                self.profile_name(),
                self.profile_idc
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// x264enc High, 320x240 (level 2).
    const HIGH_320X240: [u8; 29] = [
        0x67, 0x64, 0x00, 0x14, 0xac, 0xd9, 0x41, 0x41, 0xfb, 0x01, 0x6a, 0x0c, 0x0c, 0x0d, 0x4a,
        0x00, 0x00, 0x03, 0x00, 0x02, 0x00, 0x00, 0x03, 0x00, 0x79, 0x1e, 0x28, 0x53, 0x2c,
    ];
    /// x264enc Main, 330x250: coded 336x256, cropped.
    const MAIN_330X250: [u8; 30] = [
        0x67, 0x4d, 0x40, 0x15, 0xec, 0xa0, 0xa8, 0x43, 0xc9, 0x26, 0x02, 0xd4, 0x18, 0x18, 0x1a,
        0x94, 0x00, 0x00, 0x03, 0x00, 0x04, 0x00, 0x00, 0x03, 0x00, 0xf2, 0x3c, 0x58, 0xb6, 0x58,
    ];

    #[test]
    fn parses_a_cropped_main_profile_sps() {
        let sps = Sps::parse(&MAIN_330X250).unwrap();
        assert_eq!(sps.profile_name(), "main");
        assert_eq!((sps.coded_width, sps.coded_height), (336, 256));
        assert_eq!((sps.width, sps.height), (330, 250));
        assert_eq!((sps.crop_left, sps.crop_top), (0, 0));
    }

    #[test]
    fn parses_a_high_profile_sps() {
        let sps = Sps::parse(&HIGH_320X240).unwrap();
        assert_eq!(sps.profile_name(), "high");
        assert_eq!((sps.width, sps.height), (320, 240));
        assert_eq!((sps.coded_width, sps.coded_height), (320, 240));
        assert_eq!(sps.chroma_format_idc, 1);
        assert_eq!(sps.unsupported(), None);
        assert!(sps.dpb_frames() >= sps.max_num_ref_frames);
    }

    #[test]
    fn truncated_sps_is_an_error_but_a_truncated_vui_is_not() {
        // The fields before the VUI end in the 9th byte.
        for n in 1..9 {
            assert!(Sps::parse(&HIGH_320X240[..n]).is_err(), "{n} bytes");
        }
        let cut = Sps::parse(&HIGH_320X240[..12]).unwrap();
        assert_eq!((cut.width, cut.height), (320, 240));
        assert_eq!(cut.max_dec_frame_buffering, None);
    }
}
