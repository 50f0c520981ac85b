// SPDX-License-Identifier: MIT
/*
 * fwht-m2m: feeds vicodec's stateful FWHT encoder and decoder with WHOLE
 * buffers, padding included, for the test vectors in this directory.
 *
 * `v4l2-ctl --stream-from` copies only the visible area into the OUTPUT
 * buffers and paints the padding itself; this program writes each raw frame
 * exactly as our layout (`Format::raw`, src/m2m/layout.rs) has it, padding
 * included, and writes each decoded CAPTURE buffer whole (sizeimage bytes).
 *
 *   fwht-m2m enc DEV FOURCC W H GOP I_QP P_QP BPL SIZE IN.raw OUT.fwht
 *       IN.raw holds frames of exactly SIZE bytes each, back to back.
 *   fwht-m2m dec DEV FOURCC W H BPL SIZE IN.fwht OUT.raw
 *       OUT.raw gets every decoded CAPTURE buffer whole, SIZE bytes each.
 *
 * W x H is the visible size. BPL and SIZE are the raw layout we expect
 * (`Format::raw`: planes[0].stride and size); the program stops if vicodec's
 * G_FMT reports another bytesperline or sizeimage for the raw queue.
 *
 * Single-planar API (vicodec's default). Build on the host (the guest sees
 * the host's filesystem), from the repository root:
 *   gcc -O2 -Wall -Wextra -I.deps/linux-uapi -o DIR/fwht-m2m \
 *       tests/data/fwht/fwht-m2m.c
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/videodev2.h>
#include <poll.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>

#define OUT_T V4L2_BUF_TYPE_VIDEO_OUTPUT
#define CAP_T V4L2_BUF_TYPE_VIDEO_CAPTURE
#define MAXBUF 8

static void die(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	fprintf(stderr, "fwht-m2m: ");
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(1);
}

static int xioctl(int fd, unsigned long req, void *arg, const char *name)
{
	int r;

	do
		r = ioctl(fd, req, arg);
	while (r < 0 && errno == EINTR);
	/* EAGAIN: nothing to dequeue; EPIPE: past the LAST buffer; ENOENT: no
	 * event pending (VIDIOC_DQEVENT). */
	if (r < 0 && errno != EAGAIN && errno != EPIPE &&
	    !(errno == ENOENT && req == VIDIOC_DQEVENT))
		die("%s: %s", name, strerror(errno));
	return r < 0 ? -errno : 0;
}
#define IOC(fd, req, arg) xioctl(fd, req, arg, #req)

static uint32_t fourcc(const char *s)
{
	if (strlen(s) != 4)
		die("fourcc must be 4 characters: %s", s);
	return v4l2_fourcc(s[0], s[1], s[2], s[3]);
}

static void fcc_str(uint32_t f, char out[5])
{
	for (int i = 0; i < 4; i++)
		out[i] = (char)((f >> (8 * i)) & 0xff);
	out[4] = 0;
}

struct queue {
	uint32_t type;
	unsigned int count;
	void *mem[MAXBUF];
	size_t len[MAXBUF];
	int queued[MAXBUF];
};

static void setup_queue(int fd, struct queue *q, uint32_t type, unsigned int count)
{
	struct v4l2_requestbuffers rb = { .count = count, .type = type,
					  .memory = V4L2_MEMORY_MMAP };

	memset(q, 0, sizeof(*q));
	q->type = type;
	IOC(fd, VIDIOC_REQBUFS, &rb);
	if (rb.count == 0 || rb.count > MAXBUF)
		die("REQBUFS type %u gave %u buffers", type, rb.count);
	q->count = rb.count;
	for (unsigned int i = 0; i < q->count; i++) {
		struct v4l2_buffer b = { .index = i, .type = type,
					 .memory = V4L2_MEMORY_MMAP };

		IOC(fd, VIDIOC_QUERYBUF, &b);
		q->len[i] = b.length;
		q->mem[i] = mmap(NULL, b.length, PROT_READ | PROT_WRITE,
				 MAP_SHARED, fd, b.m.offset);
		if (q->mem[i] == MAP_FAILED)
			die("mmap: %s", strerror(errno));
	}
}

static void qbuf(int fd, struct queue *q, unsigned int i, uint32_t bytesused)
{
	struct v4l2_buffer b = { .index = i, .type = q->type,
				 .memory = V4L2_MEMORY_MMAP,
				 .bytesused = bytesused, .field = V4L2_FIELD_NONE };

	IOC(fd, VIDIOC_QBUF, &b);
	q->queued[i] = 1;
}

/* 0 and the buffer in *b, or -EAGAIN / -EPIPE. */
static int dqbuf(int fd, struct queue *q, struct v4l2_buffer *b)
{
	int r;

	memset(b, 0, sizeof(*b));
	b->type = q->type;
	b->memory = V4L2_MEMORY_MMAP;
	r = IOC(fd, VIDIOC_DQBUF, b);
	if (!r)
		q->queued[b->index] = 0;
	return r;
}

static void stream(int fd, uint32_t type, int on)
{
	int t = (int)type;

	if (on)
		IOC(fd, VIDIOC_STREAMON, &t);
	else
		IOC(fd, VIDIOC_STREAMOFF, &t);
}

static void wait_fd(int fd, short events)
{
	struct pollfd p = { .fd = fd, .events = events };
	int r = poll(&p, 1, 60000);

	if (r < 0)
		die("poll: %s", strerror(errno));
	if (r == 0)
		die("poll timed out (events 0x%x)", events);
}

static void set_ctrl(int fd, uint32_t id, int32_t value)
{
	struct v4l2_control c = { .id = id, .value = value };

	IOC(fd, VIDIOC_S_CTRL, &c);
	IOC(fd, VIDIOC_G_CTRL, &c);
	if (c.value != value)
		die("control 0x%x is %d, wanted %d", id, c.value, value);
}

static void print_fmt(const char *what, const struct v4l2_format *f)
{
	char s[5];

	fcc_str(f->fmt.pix.pixelformat, s);
	fprintf(stderr, "%s: %s %ux%u bytesperline %u sizeimage %u colorspace %u\n",
		what, s, f->fmt.pix.width, f->fmt.pix.height,
		f->fmt.pix.bytesperline, f->fmt.pix.sizeimage, f->fmt.pix.colorspace);
}

static void check_layout(const struct v4l2_format *f, uint32_t bpl, uint32_t size)
{
	if (f->fmt.pix.bytesperline != bpl || f->fmt.pix.sizeimage != size)
		die("raw layout is bytesperline %u sizeimage %u, expected %u %u",
		    f->fmt.pix.bytesperline, f->fmt.pix.sizeimage, bpl, size);
}

static int encode(int argc, char **argv)
{
	if (argc != 13)
		die("usage: enc DEV FOURCC W H GOP I_QP P_QP BPL SIZE IN OUT");
	const char *dev = argv[2];
	uint32_t fcc = fourcc(argv[3]);
	uint32_t w = strtoul(argv[4], NULL, 0), h = strtoul(argv[5], NULL, 0);
	int gop = atoi(argv[6]), iqp = atoi(argv[7]), pqp = atoi(argv[8]);
	uint32_t bpl = strtoul(argv[9], NULL, 0), size = strtoul(argv[10], NULL, 0);
	FILE *in = fopen(argv[11], "rb"), *out = fopen(argv[12], "wb");
	struct v4l2_format f = { .type = OUT_T }, cf = { .type = CAP_T };
	struct v4l2_selection sel = { .type = OUT_T, .target = V4L2_SEL_TGT_CROP,
				      .r = { 0, 0, w, h } };
	struct v4l2_encoder_cmd cmd = { .cmd = V4L2_ENC_CMD_STOP };
	struct queue oq, cq;
	struct v4l2_buffer b;
	unsigned int frames = 0, coded = 0;
	int fd = open(dev, O_RDWR | O_NONBLOCK);

	if (fd < 0 || !in || !out)
		die("open: %s", strerror(errno));

	/* OUTPUT: raw, the visible size; vicodec rounds it to the coded size. */
	IOC(fd, VIDIOC_G_FMT, &f);
	f.fmt.pix.pixelformat = fcc;
	f.fmt.pix.width = w;
	f.fmt.pix.height = h;
	f.fmt.pix.field = V4L2_FIELD_NONE;
	IOC(fd, VIDIOC_S_FMT, &f);
	IOC(fd, VIDIOC_G_FMT, &f);
	print_fmt("OUTPUT", &f);
	if (f.fmt.pix.pixelformat != fcc)
		die("OUTPUT format not accepted");
	check_layout(&f, bpl, size);
	/* The crop rectangle is the visible size (S_FMT set it to the coded size). */
	IOC(fd, VIDIOC_S_SELECTION, &sel);
	if (sel.r.width != w || sel.r.height != h)
		die("crop is %ux%u, wanted %ux%u", sel.r.width, sel.r.height, w, h);
	const size_t frame_bytes = f.fmt.pix.sizeimage;

	IOC(fd, VIDIOC_G_FMT, &cf);
	cf.fmt.pix.pixelformat = V4L2_PIX_FMT_FWHT;
	IOC(fd, VIDIOC_S_FMT, &cf);
	print_fmt("CAPTURE", &cf);
	if (cf.fmt.pix.pixelformat != V4L2_PIX_FMT_FWHT)
		die("CAPTURE format FWHT not accepted");

	set_ctrl(fd, V4L2_CID_MPEG_VIDEO_GOP_SIZE, gop);
	set_ctrl(fd, V4L2_CID_FWHT_I_FRAME_QP, iqp);
	set_ctrl(fd, V4L2_CID_FWHT_P_FRAME_QP, pqp);

	setup_queue(fd, &oq, OUT_T, 2);
	setup_queue(fd, &cq, CAP_T, 2);
	for (unsigned int i = 0; i < oq.count; i++)
		if (oq.len[i] < frame_bytes)
			die("OUTPUT buffer %u is %zu bytes < %zu", i, oq.len[i], frame_bytes);
	for (unsigned int i = 0; i < cq.count; i++)
		qbuf(fd, &cq, i, 0);
	stream(fd, OUT_T, 1);
	stream(fd, CAP_T, 1);

	int eof = 0, stopped = 0, last = 0;

	while (!last) {
		/* Queue a raw frame into every free OUTPUT buffer. */
		while (!eof) {
			unsigned int i;

			for (i = 0; i < oq.count && oq.queued[i]; i++)
				;
			if (i == oq.count)
				break;
			size_t n = fread(oq.mem[i], 1, frame_bytes, in);

			if (n == 0) {
				eof = 1;
				break;
			}
			if (n != frame_bytes)
				die("input ends inside frame %u (%zu of %zu bytes)",
				    frames, n, frame_bytes);
			qbuf(fd, &oq, i, frame_bytes);
			frames++;
		}
		if (eof && !stopped) {
			IOC(fd, VIDIOC_ENCODER_CMD, &cmd);
			stopped = 1;
		}
		wait_fd(fd, POLLIN | POLLOUT);
		while (dqbuf(fd, &oq, &b) == 0)
			;
		int r = dqbuf(fd, &cq, &b);

		if (r == -EPIPE) {
			last = 1;
		} else if (r == 0) {
			if (b.bytesused) {
				if (fwrite(cq.mem[b.index], 1, b.bytesused, out) != b.bytesused)
					die("write: %s", strerror(errno));
				coded++;
			}
			if (b.flags & V4L2_BUF_FLAG_LAST)
				last = 1;
			else
				qbuf(fd, &cq, b.index, 0);
		}
	}
	stream(fd, OUT_T, 0);
	stream(fd, CAP_T, 0);
	fclose(out);
	fprintf(stderr, "encoded %u of %u frames (%zu bytes each)\n", coded, frames,
		frame_bytes);
	return coded == frames ? 0 : 1;
}

static void subscribe(int fd, uint32_t type)
{
	struct v4l2_event_subscription s = { .type = type };

	IOC(fd, VIDIOC_SUBSCRIBE_EVENT, &s);
}

static int decode(int argc, char **argv)
{
	if (argc != 10)
		die("usage: dec DEV FOURCC W H BPL SIZE IN OUT");
	const char *dev = argv[2];
	uint32_t fcc = fourcc(argv[3]);
	uint32_t w = strtoul(argv[4], NULL, 0), h = strtoul(argv[5], NULL, 0);
	uint32_t bpl = strtoul(argv[6], NULL, 0), size = strtoul(argv[7], NULL, 0);
	FILE *in = fopen(argv[8], "rb"), *out = fopen(argv[9], "wb");
	struct v4l2_format f = { .type = OUT_T }, cf = { .type = CAP_T };
	struct v4l2_decoder_cmd cmd = { .cmd = V4L2_DEC_CMD_STOP };
	struct queue oq, cq;
	struct v4l2_buffer b;
	struct v4l2_event ev;
	size_t frame_bytes = 0, chunk;
	unsigned int decoded = 0, spins = 0;
	int eof = 0, stopped = 0, last = 0, cap_on = 0;
	int fd = open(dev, O_RDWR | O_NONBLOCK);

	if (fd < 0 || !in || !out)
		die("open: %s", strerror(errno));

	/* OUTPUT: the FWHT stream; the size only sizes the OUTPUT buffers. */
	IOC(fd, VIDIOC_G_FMT, &f);
	f.fmt.pix.pixelformat = V4L2_PIX_FMT_FWHT;
	f.fmt.pix.width = w;
	f.fmt.pix.height = h;
	IOC(fd, VIDIOC_S_FMT, &f);
	print_fmt("OUTPUT", &f);
	if (f.fmt.pix.pixelformat != V4L2_PIX_FMT_FWHT)
		die("OUTPUT format FWHT not accepted");
	subscribe(fd, V4L2_EVENT_SOURCE_CHANGE);
	subscribe(fd, V4L2_EVENT_EOS);

	setup_queue(fd, &oq, OUT_T, 2);
	chunk = f.fmt.pix.sizeimage;
	for (unsigned int i = 0; i < oq.count; i++)
		if (oq.len[i] < chunk)
			chunk = oq.len[i];
	stream(fd, OUT_T, 1);

	while (!last) {
		/* Refill free OUTPUT buffers with the next piece of the stream;
		 * frames may span buffers, vicodec reassembles them. */
		while (dqbuf(fd, &oq, &b) == 0)
			;
		while (!eof) {
			unsigned int i;

			for (i = 0; i < oq.count && oq.queued[i]; i++)
				;
			if (i == oq.count)
				break;
			size_t n = fread(oq.mem[i], 1, chunk, in);

			if (n == 0) {
				eof = 1;
				break;
			}
			qbuf(fd, &oq, i, (uint32_t)n);
		}
		if (eof && cap_on && !stopped) {
			IOC(fd, VIDIOC_DECODER_CMD, &cmd);
			stopped = 1;
		}

		while (IOC(fd, VIDIOC_DQEVENT, &ev) == 0) {
			if (ev.type == V4L2_EVENT_EOS) {
				fprintf(stderr, "EOS event\n");
				continue;
			}
			if (ev.type != V4L2_EVENT_SOURCE_CHANGE)
				continue;
			if (cap_on)
				die("resolution change mid-stream is not expected");
			IOC(fd, VIDIOC_G_FMT, &cf);
			print_fmt("CAPTURE (stream)", &cf);
			cf.fmt.pix.pixelformat = fcc;
			IOC(fd, VIDIOC_S_FMT, &cf);
			IOC(fd, VIDIOC_G_FMT, &cf);
			print_fmt("CAPTURE", &cf);
			if (cf.fmt.pix.pixelformat != fcc)
				die("CAPTURE format not accepted");
			if (cf.fmt.pix.width < w || cf.fmt.pix.height < h)
				die("CAPTURE size below the visible size");
			check_layout(&cf, bpl, size);
			frame_bytes = cf.fmt.pix.sizeimage;
			setup_queue(fd, &cq, CAP_T, 2);
			for (unsigned int i = 0; i < cq.count; i++) {
				if (cq.len[i] < frame_bytes)
					die("CAPTURE buffer too small");
				qbuf(fd, &cq, i, 0);
			}
			stream(fd, CAP_T, 1);
			cap_on = 1;
		}

		if (cap_on) {
			int r = dqbuf(fd, &cq, &b);

			if (r == -EPIPE) {
				last = 1;
			} else if (r == 0) {
				if (b.bytesused) {
					/* The WHOLE buffer, padding included. */
					if (b.bytesused != frame_bytes)
						die("bytesused %u != sizeimage %zu",
						    b.bytesused, frame_bytes);
					if (fwrite(cq.mem[b.index], 1, frame_bytes, out) !=
					    frame_bytes)
						die("write: %s", strerror(errno));
					decoded++;
				}
				if (b.flags & V4L2_BUF_FLAG_LAST)
					last = 1;
				else
					qbuf(fd, &cq, b.index, 0);
				continue;
			}
		}
		struct pollfd p = { .fd = fd, .events = POLLIN | POLLOUT | POLLPRI };

		if (poll(&p, 1, 200) == 0 && ++spins > 300)
			die("no progress for 60 s");
		if (p.revents & POLLERR)
			usleep(2000);
	}
	stream(fd, OUT_T, 0);
	stream(fd, CAP_T, 0);
	fclose(out);
	fprintf(stderr, "decoded %u frames (%zu bytes each)\n", decoded, frame_bytes);
	return decoded ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "enc"))
		return encode(argc, argv);
	if (argc >= 2 && !strcmp(argv[1], "dec"))
		return decode(argc, argv);
	die("usage: fwht-m2m enc|dec ...");
	return 2;
}
