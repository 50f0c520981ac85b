/*
 * Timing harness for the Linux kernel's FWHT codec (vicodec's codec-fwht.c),
 * built and run by benches/fwht_codec.rs so the kernel's C codec and ours are
 * measured side by side on the same raw frames. This file is ours; the
 * kernel source is extracted from /usr/src/linux-source-6.12.tar.xz at bench
 * time and never committed.
 *
 * It mirrors what vicodec does around the codec calls for I420 (YU12):
 * - encode: v4l2_fwht_encode()'s GOP logic (intra when gop_cnt == 0, no
 *   reference update when the next frame is planned intra, gop_cnt restarts
 *   when nothing was P-coded) and header; the reference starts zeroed;
 * - decode: fwht_decode_frame() into the CAPTURE buffer, then vicodec-core's
 *   copy_cap_to_ref() (visible rows only) for the next P-frame.
 *
 * usage: harness RAW W H FRAMES RUNS GOP IQP PQP OUT_STREAM OUT_LAST_DECODED
 * RAW holds FRAMES I420 frames in vicodec's layout (coded size rounded up to
 * 16 luma rows/columns). Prints "enc_fps_median dec_fps_median".
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <arpa/inet.h>
#include "codec-fwht.h"

#define FL_COMPONENTS_NUM_OFFSET 16
#define FL_PIXENC_YUV (1u << 19)
#define FL_I_FRAME (1u << 10)
#define FL_LUMA_RAW (1u << 4)
#define FL_CB_RAW (1u << 5)
#define FL_CR_RAW (1u << 6)

static double now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;

	return (x > y) - (x < y);
}

static void i420_frame(struct fwht_raw_frame *rf, u8 *buf, unsigned int size)
{
	rf->width_div = 2;
	rf->height_div = 2;
	rf->luma_alpha_step = 1;
	rf->chroma_step = 1;
	rf->components_num = 3;
	rf->buf = buf;
	rf->luma = buf;
	rf->cb = buf + size;
	rf->cr = rf->cb + size / 4;
	rf->alpha = NULL;
}

int main(int argc, char **argv)
{
	if (argc != 11) {
		fprintf(stderr, "usage: %s RAW W H FRAMES RUNS GOP IQP PQP OUT_STREAM OUT_LAST\n", argv[0]);
		return 2;
	}
	const char *raw_path = argv[1];
	unsigned int w = atoi(argv[2]), h = atoi(argv[3]);
	unsigned int frames = atoi(argv[4]), runs = atoi(argv[5]);
	unsigned int gop_size = atoi(argv[6]);
	u16 iqp = atoi(argv[7]), pqp = atoi(argv[8]);
	unsigned int cw = (w + 15) / 16 * 16, ch = (h + 15) / 16 * 16;
	unsigned int size = cw * ch, frame_size = size * 3 / 2;
	unsigned int max_coded = sizeof(struct fwht_cframe_hdr) + frame_size;
	u8 *raw = malloc((size_t)frame_size * frames);
	u8 *coded = malloc((size_t)max_coded * frames);
	unsigned int *coded_len = calloc(frames, sizeof(*coded_len));
	double *enc_fps = calloc(runs, sizeof(double));
	double *dec_fps = calloc(runs, sizeof(double));
	FILE *f = fopen(raw_path, "rb");

	if (!f || fread(raw, frame_size, frames, f) != frames) {
		fprintf(stderr, "cannot read %u frames of %u bytes from %s\n", frames, frame_size, raw_path);
		return 1;
	}
	fclose(f);

	for (unsigned int r = 0; r < runs; r++) {
		u8 *ref_buf = calloc(1, frame_size);
		struct fwht_raw_frame ref;
		unsigned int gop_cnt = 0;
		double t;

		i420_frame(&ref, ref_buf, size);
		t = now();
		for (unsigned int n = 0; n < frames; n++) {
			struct fwht_raw_frame rf;
			struct fwht_cframe cf;
			struct fwht_cframe_hdr *hdr = (void *)(coded + (size_t)n * max_coded);
			u32 encoding, flags = 0;

			i420_frame(&rf, raw + (size_t)n * frame_size, size);
			cf.i_frame_qp = iqp;
			cf.p_frame_qp = pqp;
			cf.rlc_data = (__be16 *)(hdr + 1);
			encoding = fwht_encode_frame(&rf, &ref, &cf, !gop_cnt,
						     gop_cnt == gop_size - 1,
						     w, h, cw, cw / 2);
			if (!(encoding & FWHT_FRAME_PCODED))
				gop_cnt = 0;
			if (++gop_cnt >= gop_size)
				gop_cnt = 0;
			flags |= 2u << FL_COMPONENTS_NUM_OFFSET;
			flags |= FL_PIXENC_YUV;
			if (encoding & FWHT_LUMA_UNENCODED)
				flags |= FL_LUMA_RAW;
			if (encoding & FWHT_CB_UNENCODED)
				flags |= FL_CB_RAW;
			if (encoding & FWHT_CR_UNENCODED)
				flags |= FL_CR_RAW;
			if (!(encoding & FWHT_FRAME_PCODED))
				flags |= FL_I_FRAME;
			hdr->magic1 = FWHT_MAGIC1;
			hdr->magic2 = FWHT_MAGIC2;
			hdr->version = htonl(3);
			hdr->width = htonl(w);
			hdr->height = htonl(h);
			hdr->flags = htonl(flags);
			hdr->colorspace = htonl(3);
			hdr->xfer_func = 0;
			hdr->ycbcr_enc = 0;
			hdr->quantization = 0;
			hdr->size = htonl(cf.size);
			coded_len[n] = sizeof(*hdr) + cf.size;
		}
		enc_fps[r] = frames / (now() - t);
		free(ref_buf);
	}

	f = fopen(argv[9], "wb");
	for (unsigned int n = 0; n < frames && f; n++)
		fwrite(coded + (size_t)n * max_coded, 1, coded_len[n], f);
	if (f)
		fclose(f);

	u8 *dst = malloc(frame_size);
	for (unsigned int r = 0; r < runs; r++) {
		u8 *ref_buf = calloc(1, frame_size);
		struct fwht_raw_frame ref, out;
		double t;

		i420_frame(&ref, ref_buf, size);
		i420_frame(&out, dst, size);
		t = now();
		for (unsigned int n = 0; n < frames; n++) {
			struct fwht_cframe_hdr *hdr = (void *)(coded + (size_t)n * max_coded);
			struct fwht_cframe cf;

			cf.rlc_data = (__be16 *)(hdr + 1);
			cf.size = ntohl(hdr->size);
			if (!fwht_decode_frame(&cf, ntohl(hdr->flags), 3, w, h,
					       &ref, cw, cw / 2, &out, cw, cw / 2)) {
				fprintf(stderr, "decode failed at frame %u\n", n);
				return 1;
			}
			/* vicodec-core.c copy_cap_to_ref(): visible rows only */
			for (unsigned int p = 0; p < 3; p++) {
				unsigned int stride = p ? cw / 2 : cw;
				unsigned int rows = p ? h / 2 : h;
				const u8 *s = p == 0 ? out.luma : p == 1 ? out.cb : out.cr;
				u8 *d = p == 0 ? ref.luma : p == 1 ? ref.cb : ref.cr;

				for (unsigned int y = 0; y < rows; y++)
					memcpy(d + y * stride, s + y * stride, stride);
			}
		}
		dec_fps[r] = frames / (now() - t);
		free(ref_buf);
	}
	f = fopen(argv[10], "wb");
	if (f) {
		fwrite(dst, 1, frame_size, f);
		fclose(f);
	}

	qsort(enc_fps, runs, sizeof(double), cmp_double);
	qsort(dec_fps, runs, sizeof(double), cmp_double);
	printf("%.3f %.3f\n", enc_fps[runs / 2], dec_fps[runs / 2]);
	return 0;
}
