//! FWHT codec, bit-exact with the kernel vicodec driver.
