//! The only raw-syscall code: memfd, mmap, eventfd, DMA_BUF_IOCTL_SYNC, udmabuf, dma-heap.
