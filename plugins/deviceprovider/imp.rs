//! The provider and device subclasses (see `mod.rs` for what they list).

use std::sync::{LazyLock, OnceLock};

use gst::glib;
use gst::prelude::*;
use gst::subclass::prelude::*;

use super::caps;
use crate::common::device::{self, DeviceChoice};
use crate::m2m::{Device as _, Format, PixelFormat, Role};
use crate::v4l2::discovery::{self, CodecNode, NodeFormat};

static CAT: LazyLock<gst::DebugCategory> = LazyLock::new(|| {
    gst::DebugCategory::new(
        "vpudeviceprovider",
        gst::DebugColorFlags::empty(),
        Some("VPU device provider"),
    )
});

/// Device class of a VPU entry; see `mod.rs`.
fn device_class(role: Role) -> &'static str {
    match role {
        Role::Decoder => "Video/Codec/Decoder",
        Role::Encoder => "Video/Codec/Encoder",
    }
}

/// What a device entry creates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub role: Role,
    pub codec: NodeFormat,
    /// The elements' `device` value for this VPU.
    pub device: DeviceChoice,
    /// The element factory for this role and codec, `vpu<codec>dec|enc`.
    pub factory: Option<String>,
}

impl Entry {
    fn new(role: Role, codec: NodeFormat, device: DeviceChoice) -> Entry {
        let suffix = match role {
            Role::Decoder => "dec",
            Role::Encoder => "enc",
        };
        Entry {
            role,
            codec,
            device,
            factory: caps::codec_name(codec).map(|name| format!("vpu{name}{suffix}")),
        }
    }

    /// The factory, when it is registered.
    fn registered_factory(&self) -> Option<gst::ElementFactory> {
        self.factory.as_deref().and_then(gst::ElementFactory::find)
    }

    fn properties(&self) -> gst::structure::Builder {
        let mut s = gst::Structure::builder("vpu-device")
            .field("vpu.role", self.role.to_string())
            .field("vpu.codec", self.codec.to_string())
            .field("vpu.device", self.device.to_string());
        if let Some(f) = self.registered_factory() {
            s = s.field("vpu.element", f.name());
        }
        s
    }
}

/// A device for every coded format of a kernel node.
fn kernel_devices(node: &CodecNode) -> Vec<super::VpuDevice> {
    node.coded
        .iter()
        .map(|coded| {
            let entry = Entry::new(
                node.role,
                coded.format,
                DeviceChoice::Path(node.path.clone()),
            );
            let properties = entry
                .properties()
                .field("device.api", "v4l2")
                .field("device.path", node.path.display().to_string())
                .field("v4l2.device.driver", &node.driver)
                .field("v4l2.device.card", &node.card)
                .field("v4l2.device.bus_info", &node.bus_info)
                .build();
            let name = format!(
                "{} {} {} ({})",
                node.card,
                coded.format,
                node.role,
                node.path.display()
            );
            let caps = caps::device_caps(coded.format, coded.sizes, &node.raw);
            super::VpuDevice::new(&name, &caps, properties, entry)
        })
        .collect()
}

/// A device for every (role, codec) of the emulated VPU (booted if it is not
/// yet: the list is the firmware's own).
fn emulated_devices() -> Vec<super::VpuDevice> {
    let vpu = match device::emulated() {
        Ok(vpu) => vpu,
        Err(e) => {
            gst::warning!(CAT, "emulated VPU not listed: it does not boot: {e}");
            return Vec::new();
        }
    };
    let info = vpu.info();
    let raw: Vec<NodeFormat> = PixelFormat::ALL
        .iter()
        .filter(|p| !p.is_coded() && Format::raw(**p, 16, 16).is_some())
        .map(|&p| NodeFormat::Known(p))
        .collect();
    info.codecs
        .iter()
        .map(|&(role, codec)| {
            let entry = Entry::new(role, NodeFormat::Known(codec), DeviceChoice::Emulated);
            let properties = entry.properties().field("device.api", "emulated").build();
            let name = format!("{} {codec} {role}", info.name);
            let caps = caps::device_caps(NodeFormat::Known(codec), None, &raw);
            super::VpuDevice::new(&name, &caps, properties, entry)
        })
        .collect()
}

/// Every VPU device: kernel nodes first (in discovery order), then the
/// emulated VPU, the order in which `device=auto` prefers them.
fn all_devices() -> Vec<gst::Device> {
    discovery::nodes()
        .iter()
        .flat_map(kernel_devices)
        .chain(emulated_devices())
        .map(|d| d.upcast())
        .collect()
}

#[derive(Default)]
pub struct VpuDeviceProvider;

#[glib::object_subclass]
impl ObjectSubclass for VpuDeviceProvider {
    const NAME: &'static str = "GstVpuDeviceProvider";
    type Type = super::VpuDeviceProvider;
    type ParentType = gst::DeviceProvider;
}

impl ObjectImpl for VpuDeviceProvider {}
impl GstObjectImpl for VpuDeviceProvider {}

impl DeviceProviderImpl for VpuDeviceProvider {
    fn metadata() -> Option<&'static gst::subclass::DeviceProviderMetadata> {
        static META: LazyLock<gst::subclass::DeviceProviderMetadata> = LazyLock::new(|| {
            gst::subclass::DeviceProviderMetadata::new(
                "VPU Device Provider",
                "Video/Codec/Decoder/Encoder",
                "Lists the VPUs the rsvpu elements can drive: kernel V4L2 stateful \
                 codec nodes and the emulated VPU",
                "gst-vpu developers",
            )
        });
        Some(&META)
    }

    fn probe(&self) -> Vec<gst::Device> {
        all_devices()
    }

    /// Discovery is a once per process scan without hotplug, so starting is
    /// announcing what it found.
    fn start(&self) -> Result<(), gst::LoggableError> {
        let obj = self.obj();
        for d in all_devices() {
            gst::debug!(CAT, imp = self, "adding {}", d.display_name());
            obj.device_add(&d);
        }
        Ok(())
    }

    /// Nothing to tear down: `gst_device_provider_stop` drops the devices
    /// `start` added itself (and holds the provider's lock around this call,
    /// so asking for them here would deadlock).
    fn stop(&self) {}
}

#[derive(Default)]
pub struct VpuDevice {
    entry: OnceLock<Entry>,
}

#[glib::object_subclass]
impl ObjectSubclass for VpuDevice {
    const NAME: &'static str = "GstVpuDevice";
    type Type = super::VpuDevice;
    type ParentType = gst::Device;
}

impl ObjectImpl for VpuDevice {}
impl GstObjectImpl for VpuDevice {}

impl DeviceImpl for VpuDevice {
    fn create_element(&self, name: Option<&str>) -> Result<gst::Element, gst::LoggableError> {
        let entry = self
            .entry
            .get()
            .ok_or_else(|| gst::loggable_error!(CAT, "device without an entry"))?;
        let factory = entry.registered_factory().ok_or_else(|| {
            gst::loggable_error!(
                CAT,
                "no rsvpu element for a {} {} in this build{}",
                entry.codec,
                entry.role,
                entry
                    .factory
                    .as_deref()
                    .map(|f| format!(" ({f} is not registered)"))
                    .unwrap_or_default()
            )
        })?;
        let mut builder = factory
            .create()
            .property("device", entry.device.to_string());
        if let Some(name) = name {
            builder = builder.name(name);
        }
        builder
            .build()
            .map_err(|e| gst::loggable_error!(CAT, "creating {}: {e}", factory.name()))
    }

    fn reconfigure_element(&self, element: &gst::Element) -> Result<(), gst::LoggableError> {
        let entry = self
            .entry
            .get()
            .ok_or_else(|| gst::loggable_error!(CAT, "device without an entry"))?;
        let same_factory = element
            .factory()
            .is_some_and(|f| Some(f.name().as_str()) == entry.factory.as_deref());
        if !same_factory {
            return Err(gst::loggable_error!(
                CAT,
                "{} is not a {}",
                element.name(),
                entry.factory.as_deref().unwrap_or("VPU element")
            ));
        }
        element.set_property("device", entry.device.to_string());
        Ok(())
    }
}

impl super::VpuDevice {
    fn new(
        display_name: &str,
        caps: &gst::Caps,
        properties: gst::Structure,
        entry: Entry,
    ) -> super::VpuDevice {
        let device: super::VpuDevice = glib::Object::builder()
            .property("display-name", display_name)
            .property("device-class", device_class(entry.role))
            .property("caps", caps)
            .property("properties", properties)
            .build();
        // A fresh object: the cell is empty.
        let _ = device.imp().entry.set(entry);
        device
    }

    /// The `device` value and element factory this device stands for.
    #[cfg(test)]
    pub(super) fn entry(&self) -> Option<&Entry> {
        self.imp().entry.get()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v4l2::discovery::CodedFormat;

    #[test]
    fn a_kernel_node_gives_one_device_per_coded_format() {
        gst::init().unwrap();
        let node = CodecNode {
            path: "/dev/video7".into(),
            driver: "hantro-vpu".into(),
            card: "rockchip,rk3399-vpu-dec".into(),
            bus_info: "platform:rkvdec".into(),
            role: Role::Decoder,
            multiplanar: true,
            coded: vec![
                CodedFormat {
                    format: NodeFormat::Known(PixelFormat::Fwht),
                    sizes: None,
                },
                CodedFormat {
                    format: NodeFormat::Other(crate::m2m::format::fourcc(b"VP80")),
                    sizes: None,
                },
            ],
            raw: vec![NodeFormat::Known(PixelFormat::Nv12)],
        };
        let devices = kernel_devices(&node);
        assert_eq!(devices.len(), 2);
        let fwht = &devices[0];
        assert_eq!(fwht.device_class(), "Video/Codec/Decoder");
        assert_eq!(
            fwht.display_name(),
            "rockchip,rk3399-vpu-dec FWHT decoder (/dev/video7)"
        );
        let props = fwht.properties().unwrap();
        assert_eq!(props.get::<&str>("device.path").unwrap(), "/dev/video7");
        assert_eq!(
            props.get::<&str>("v4l2.device.driver").unwrap(),
            "hantro-vpu"
        );
        assert_eq!(props.get::<&str>("vpu.device").unwrap(), "/dev/video7");
        assert_eq!(props.get::<&str>("vpu.codec").unwrap(), "FWHT");
        let entry = fwht.entry().unwrap();
        assert_eq!(entry.factory.as_deref(), Some("vpufwhtdec"));
        assert_eq!(entry.device, DeviceChoice::Path("/dev/video7".into()));
        let vp8 = devices[1].entry().unwrap();
        assert_eq!(vp8.factory.as_deref(), Some("vpuvp8dec"));
        // No element for VP8 in this build: an error (logged with the
        // reason), not a panic.
        assert!(devices[1].create_element(None).is_err());
    }
}
