//! Memory model: regions, ownership, coherency checker, pools. gst-free.
