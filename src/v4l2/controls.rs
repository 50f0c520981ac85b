//! V4L2 controls: enumeration with `VIDIOC_QUERY_EXT_CTRL`, lookup by the
//! names `v4l2-ctl` prints (what `extra-controls` uses), and setting.

use std::os::fd::AsRawFd;

use v4l2r::bindings;
use v4l2r::ioctl::{CtrlId, QueryCtrlFlags, query_ext_ctrl};

/// One control of a node, as `VIDIOC_QUERY_EXT_CTRL` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlInfo {
    pub id: u32,
    /// The driver's name, e.g. "Video GOP Size".
    pub name: String,
    /// The name as `v4l2-ctl -l` prints it, e.g. "video_gop_size".
    pub key: String,
    /// `V4L2_CTRL_TYPE_*`.
    pub kind: u32,
    pub minimum: i64,
    pub maximum: i64,
    pub default: i64,
    pub flags: u32,
}

impl ControlInfo {
    /// True for control types set with a plain integer (`VIDIOC_S_CTRL`).
    pub fn is_integer(&self) -> bool {
        matches!(
            self.kind,
            bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_INTEGER
                | bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_BOOLEAN
                | bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_MENU
                | bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_INTEGER_MENU
                | bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_BUTTON
                | bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_BITMASK
        )
    }

    /// True for write-only triggers (force key frame ...).
    pub fn is_button(&self) -> bool {
        self.kind == bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_BUTTON
    }
}

/// A control name the way `v4l2-ctl` turns it into a key (its `name2var`):
/// ASCII letters and digits lower-cased, every run of other characters
/// between them one `_`, none leading or trailing.
/// "FWHT I-Frame QP Value" -> "fwht_i_frame_qp_value".
pub fn normalise_control_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut gap = false;
    for c in name.chars() {
        if c.is_ascii_alphanumeric() {
            if gap && !out.is_empty() {
                out.push('_');
            }
            gap = false;
            out.push(c.to_ascii_lowercase());
        } else {
            gap = true;
        }
    }
    out
}

fn info(q: bindings::v4l2_query_ext_ctrl) -> ControlInfo {
    let bytes: Vec<u8> = q
        .name
        .iter()
        .take_while(|&&c| c != 0)
        .map(|&c| c as u8)
        .collect();
    let name = String::from_utf8_lossy(&bytes).into_owned();
    ControlInfo {
        id: q.id,
        key: normalise_control_name(&name),
        name,
        kind: q.type_,
        minimum: q.minimum,
        maximum: q.maximum,
        default: q.default_value,
        flags: q.flags,
    }
}

/// The control `id` of the node, `None` if it has none.
pub(super) fn query(fd: &impl AsRawFd, id: u32) -> Option<ControlInfo> {
    let id = CtrlId::new(id).ok()?;
    query_ext_ctrl::<bindings::v4l2_query_ext_ctrl>(fd, id, QueryCtrlFlags::empty())
        .ok()
        .map(info)
        .filter(|c| c.flags & bindings::V4L2_CTRL_FLAG_DISABLED == 0)
}

/// Every control of the node (class headings and disabled ones left out).
pub(super) fn enumerate(fd: &impl AsRawFd) -> Vec<ControlInfo> {
    let mut out = Vec::new();
    let mut id = 0u32;
    // A driver walks its controls in increasing id order; the bound only
    // guards against one that does not.
    for _ in 0..4096 {
        let Ok(next) = CtrlId::new(id) else { break };
        let flags = QueryCtrlFlags::NEXT | QueryCtrlFlags::COMPOUND;
        let Ok(q) = query_ext_ctrl::<bindings::v4l2_query_ext_ctrl>(fd, next, flags) else {
            break;
        };
        if q.id & bindings::V4L2_CTRL_ID_MASK <= id {
            break;
        }
        id = q.id & bindings::V4L2_CTRL_ID_MASK;
        let c = info(q);
        if c.kind != bindings::v4l2_ctrl_type_V4L2_CTRL_TYPE_CTRL_CLASS
            && c.flags & bindings::V4L2_CTRL_FLAG_DISABLED == 0
        {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_normalise_like_v4l2_ctl() {
        assert_eq!(normalise_control_name("Video GOP Size"), "video_gop_size");
        assert_eq!(
            normalise_control_name("FWHT I-Frame QP Value"),
            "fwht_i_frame_qp_value"
        );
        assert_eq!(
            normalise_control_name("  Min Number of Capture Buffers "),
            "min_number_of_capture_buffers"
        );
        assert_eq!(
            normalise_control_name("H264 8x8 (Transform)"),
            "h264_8x8_transform"
        );
    }
}
