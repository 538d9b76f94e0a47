/* The contours' boxes of every level set of a uint8 map, in a few passes over its pixels.
 *
 * Why C: wsolevaluation's box metrics need, at up to a hundred cut levels c, the box of every contour
 * of the mask u > c (MaxBoxAccV2) or of its largest contour (MaxBoxAcc).  OpenCV answers one level
 * per call, and numpy has no sequential union-find, so both spend time in proportion to levels x
 * pixels.  Building the level sets incrementally (pixels joined to their neighbours by union-find,
 * band by band between consecutive cuts) visits each pixel once for all levels.  sweep.py keeps the
 * per-level OpenCV loop, the definition, where this module is not built.
 *
 *   components: 8-connected sets of u > c, an outer contour each.  Pixels join from the highest band
 *               down; once every value above c is in, the box of each live set is recorded for
 *               level c.  The same pass counts the Euler number (components - holes) from each
 *               joining pixel's neighbours, so the number of holes of every level is known.
 *   holes:      4-connected sets of u <= c that do not reach the image border (OpenCV pads the mask
 *               with zeros, so a set reaching the border is outside), a hole contour each.  Pixels
 *               join from the lowest band up, the one-pixel frame around the image being one
 *               "outside" set from the start; the pass stops after the highest level with holes,
 *               and at a level without holes puts everything outside at once.
 *   largest:    the contour of largest cv2.contourArea.  The area of a chain of boundary pixel
 *               centres around a set without holes is n4 + n3 / 2, with n_k the number of 2x2
 *               windows holding k of its pixels (whole unit squares and half squares between pixel
 *               centres); each set carries 2 x that, updated as pixels join.  A hole contour runs
 *               inside its component's outer contour (area at most the same, and after it in
 *               OpenCV's order), and a set inside a hole is smaller still, so the first largest
 *               contour is the outer contour of a component of the mask with its holes filled.
 *               Without holes, that is the component pass's set of largest area.  With holes, a
 *               set's own windows bound its filled area from below and its box from above, which
 *               settles most levels; a level left open is settled by a flood from the border that
 *               gives each pixel the lowest level at which it is outside (filling the holes), and a
 *               second component pass that joins the pixels in that order.  Ties go to the set
 *               whose first pixel comes last in raster order: OpenCV lists sibling contours in the
 *               reverse of the order its raster scan finds them.
 *
 * Output: bytes of int32 records (image, threshold column, x0, y0, x1, y1), inclusive pixel bounds.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* A pixel's 8 neighbours as bits of a code: bits 0-2 the row above (left to right), bit 3 the
 * right neighbour, bits 4-6 the row below (left to right), bit 7 the left neighbour, so that each
 * row's three flags come from one 4-byte load.  Around the pixel (each 4-adjacent to the next):
 * UL U UR R DR D DL L. */
static const int ring_bit[8] = {0, 1, 2, 3, 6, 5, 4, 7};
static const int ring_dy[8] = {-1, -1, -1, 0, 1, 1, 1, 0};
static const int ring_dx[8] = {-1, 0, 1, 1, 1, 0, -1, -1};

/* By code:
 * euler4_change: the change of 4 x Euler number when the pixel joins (8-connected sets, Gray's
 *                2x2 quads: a window with one pixel counts +1, three pixels -1, a diagonal pair -2);
 * area2_change:  the change of 2 x n4 + n3 (twice the contour area, see the header): windows that
 *                held 2 or 3 pixels gain 1 each;
 * run_heads:     ring positions of one neighbour per circular run of present neighbours (up to 4,
 *                then -1); neighbours within a run touch each other, so they are already
 *                one set, and only run heads need a union;
 * heads_beside_left: the same without the run that holds the left neighbour, whose set is known when
 *                it joined just before (the next pixel of a row in the same band). */
static int8_t euler4_change[256];
static int8_t area2_change[256];
static int8_t run_heads[256][5];
static int8_t heads_beside_left[256][5];

static int quad_euler4(int count, int diagonal) {
    return count == 1 ? 1 : count == 3 ? -1 : (count == 2 && diagonal) ? -2 : 0;
}

static void build_tables(void) {
    /* the four 2x2 windows holding the pixel, by ring position: corner, then its two sides */
    static const int windows[4][3] = {{0, 1, 7}, {2, 1, 3}, {4, 3, 5}, {6, 5, 7}};
    for (int code = 0; code < 256; code++) {
        int present[8];
        for (int i = 0; i < 8; i++) present[i] = code >> ring_bit[i] & 1;
        int euler = 0, area = 0;
        for (int w = 0; w < 4; w++) {
            int corner = present[windows[w][0]];
            int before = corner + present[windows[w][1]] + present[windows[w][2]];
            /* a diagonal pair before: both sides without the corner; after: the pixel and the corner */
            euler += quad_euler4(before + 1, before == 1 && corner) - quad_euler4(before, before == 2 && !corner);
            area += before == 2 || before == 3;
        }
        euler4_change[code] = (int8_t)euler;
        area2_change[code] = (int8_t)area;
        int count = 0;
        memset(run_heads[code], -1, sizeof(run_heads[code]));
        for (int i = 0; i < 8; i++)
            if (present[i] && !present[(i + 7) % 8]) run_heads[code][count++] = (int8_t)i;
        if (code == 255) run_heads[code][0] = 0; /* one run all around */
        memset(heads_beside_left[code], -1, sizeof(heads_beside_left[code]));
        if (present[7] && code != 255) {
            int head = 7; /* the left neighbour's run starts after the first absent neighbour back from it */
            while (present[(head + 7) % 8]) head = (head + 7) % 8;
            for (int i = 0, k = 0; run_heads[code][i] >= 0; i++)
                if (run_heads[code][i] != head) heads_beside_left[code][k++] = run_heads[code][i];
        }
    }
}

/* The flags of three consecutive bytes (each 0 or 1) as three consecutive bits: the multiplication
 * moves bytes 0, 1, 2 to bits 14, 15, 16 without carries. */
static inline unsigned three_flags(const uint8_t *first) {
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    uint32_t word = (uint32_t)first[0] | (uint32_t)first[1] << 8 | (uint32_t)first[2] << 16;
#else
    uint32_t word; /* one load (little-endian: byte 0 is the lowest) */
    memcpy(&word, first, sizeof(word));
#endif
    return ((word & 0x010101u) * 0x4081u) >> 14 & 7u;
}

typedef struct {
    int32_t *data;
    Py_ssize_t count, capacity; /* in records */
    int32_t image;              /* written into every record */
} Records;

enum { RECORD_FIELDS = 6 };

static int records_push(Records *records, int32_t column, const int32_t box[4]) {
    if (records->count == records->capacity) {
        Py_ssize_t capacity = records->capacity ? 2 * records->capacity : 4096;
        int32_t *data = realloc(records->data, (size_t)capacity * RECORD_FIELDS * sizeof(int32_t));
        if (!data) return -1;
        records->data = data;
        records->capacity = capacity;
    }
    int32_t *row = records->data + RECORD_FIELDS * records->count++;
    row[0] = records->image;
    row[1] = column;
    memcpy(row + 2, box, 4 * sizeof(int32_t));
    return 0;
}

static PyObject *records_bytes(const Records *records) {
    return PyBytes_FromStringAndSize(records->count ? (const char *)records->data : "",
                                     records->count * RECORD_FIELDS * (Py_ssize_t)sizeof(int32_t));
}

/* What a set's root carries; one struct, so that updating a root touches one cache line. */
typedef struct {
    int32_t box[4]; /* x0, y0, x1, y1 */
    int32_t first;  /* the set's first pixel in raster order (padded index) */
    int32_t slot;   /* position in the live list */
    int32_t area2;  /* 2 x n4 + n3 over the set's windows (see the header); at most 2 (H - 1)(W - 1) < 2^31 */
    int32_t euler4; /* 4 x (1 - holes) for a component */
} SetInfo;

/* Disjoint sets over the padded pixel grid; the live roots (every root but the outside one) are kept
 * in a list for recording. */
typedef struct {
    int32_t *parent, *live;
    SetInfo *set;
    uint8_t *in; /* pixel has joined */
    Py_ssize_t n_live;
    int32_t outside; /* root of the outside set, or -1 */
} Forest;

static inline int32_t find_root(int32_t *parent, int32_t node) {
    while (parent[node] != node) { /* path halving */
        parent[node] = parent[parent[node]];
        node = parent[node];
    }
    return node;
}

static inline int64_t box_area(const int32_t box[4]) {
    return (int64_t)(box[2] - box[0] + 1) * (box[3] - box[1] + 1);
}

/* Joins two roots (the outside set always absorbs; otherwise the one with the larger box, a cheap
 * stand-in for the larger set that keeps the trees shallow); returns the surviving root. */
static int32_t merge_roots(Forest *forest, int32_t keep, int32_t gone) {
    if (gone == forest->outside ||
        (keep != forest->outside && box_area(forest->set[gone].box) > box_area(forest->set[keep].box))) {
        int32_t swap = keep; keep = gone; gone = swap;
    }
    forest->parent[gone] = keep;
    SetInfo *g = &forest->set[gone], *k = &forest->set[keep];
    int32_t last = forest->live[--forest->n_live];
    forest->live[g->slot] = last;
    forest->set[last].slot = g->slot;
    if (keep != forest->outside) {
        if (g->box[0] < k->box[0]) k->box[0] = g->box[0];
        if (g->box[1] < k->box[1]) k->box[1] = g->box[1];
        if (g->box[2] > k->box[2]) k->box[2] = g->box[2];
        if (g->box[3] > k->box[3]) k->box[3] = g->box[3];
        if (g->first < k->first) k->first = g->first;
        k->area2 += g->area2;
        k->euler4 += g->euler4;
    }
    return keep;
}

static inline void new_set(Forest *forest, int32_t p, int32_t x, int32_t y) {
    SetInfo *s = &forest->set[p];
    forest->parent[p] = p;
    s->box[0] = s->box[2] = x;
    s->box[1] = s->box[3] = y;
    s->first = p;
    s->area2 = 0;
    s->euler4 = 4;
    s->slot = (int32_t)forest->n_live;
    forest->live[forest->n_live++] = p;
}

static inline void add_to_set(Forest *forest, int32_t p, int32_t root, int32_t x, int32_t y, int area2, int euler4) {
    forest->parent[p] = root;
    if (root == forest->outside) return;
    SetInfo *s = &forest->set[root];
    if (x < s->box[0]) s->box[0] = x;
    if (x > s->box[2]) s->box[2] = x;
    if (y < s->box[1]) s->box[1] = y;
    if (y > s->box[3]) s->box[3] = y;
    if (p < s->first) s->first = p;
    s->area2 += area2;
    s->euler4 += euler4;
}

static int record_live(const Forest *forest, Records *records, int32_t column) {
    for (Py_ssize_t i = 0; i < forest->n_live; i++)
        if (records_push(records, column, forest->set[forest->live[i]].box)) return -1;
    return 0;
}

/* The box of the live component whose outer contour has the largest area, ties to the last first
 * pixel: returns 1, or 0 when none is live, or -1 when holes leave it open.  A component's area2
 * is its filled area (exact) without holes, a lower bound with them (filling adds windows); with
 * them, its filled area is at most that of the rectangle through its box's corner pixels.  The set
 * of the largest lower bound wins if it beats every other set's upper bound. */
static int largest_live(const Forest *forest, int32_t box[4]) {
    if (!forest->n_live) return 0;
    const SetInfo *best = &forest->set[forest->live[0]];
    for (Py_ssize_t i = 1; i < forest->n_live; i++) {
        const SetInfo *s = &forest->set[forest->live[i]];
        if (s->area2 > best->area2 || (s->area2 == best->area2 && s->first > best->first)) best = s;
    }
    for (Py_ssize_t i = 0; i < forest->n_live; i++) {
        const SetInfo *s = &forest->set[forest->live[i]];
        const int64_t upper = s->euler4 == 4 ? s->area2
                                             : 2 * (int64_t)(s->box[2] - s->box[0]) * (s->box[3] - s->box[1]);
        if (s != best && (upper > best->area2 || (upper == best->area2 && s->first > best->first))) return -1;
    }
    memcpy(box, best->box, 4 * sizeof(int32_t));
    return 1;
}

/* An image's pixels by band: band b holds the values v with cuts[b - 1] < v <= cuts[b], so the
 * mask u > cuts[k] is bands k + 1 and up, and u <= cuts[k] bands 0 to k.  Within a band, pixels
 * are in raster order (any order gives the same sets at the cuts; this one is cache-friendly). */
typedef struct {
    int32_t *order; /* by band: padded pixel index, then y << 16 | x, for each pixel */
    Py_ssize_t band_start[258];
    uint16_t band_of_value[256];
    Py_ssize_t padded_width;
} Pixels;

/* The distinct cuts of one image (increasing), the first threshold column of each, the number of
 * holes of each level, and its largest contour: box and status (largest_live's return value). */
typedef struct {
    int32_t *cuts, *columns, *largest;
    Py_ssize_t *holes;
    Py_ssize_t count;
} Levels;

/* The pixel joined last and its root (which stays a root until the next join). */
typedef struct {
    int32_t pixel, root;
} Last;

/* Merges root's set with the sets of the neighbours at the ring positions `heads` (up to -1); returns
 * the surviving root. */
static inline int32_t join_heads(Forest *forest, int32_t root, int32_t p, const int8_t *heads, const int32_t ring[8]) {
    for (; *heads >= 0; heads++) {
        const int32_t n = p + ring[*heads];
        if (forest->parent[n] == root) continue; /* a direct member of root's set */
        const int32_t other = find_root(forest->parent, n);
        if (other != root) root = merge_roots(forest, root, other);
    }
    return root;
}

/* Joins foreground pixel p (8-connected) to its present neighbours' sets; returns its Euler change. */
static inline int join_foreground(Forest *forest, int32_t p, int32_t x, int32_t y, Py_ssize_t row,
                                  const int32_t ring[8], Last *last) {
    uint8_t *in = forest->in;
    const unsigned code = three_flags(in + p - row - 1) | (unsigned)in[p + 1] << 3 |
                          three_flags(in + p + row - 1) << 4 | (unsigned)in[p - 1] << 7;
    in[p] = 1;
    int32_t root;
    if (p == last->pixel + 1) {
        /* the next pixel of a row in the same band: its left neighbour's set is known, and only the
         * right edge of that set's box can move (the left neighbour is on the same row, earlier) */
        root = join_heads(forest, last->root, p, heads_beside_left[code], ring);
        SetInfo *s = &forest->set[root];
        forest->parent[p] = root;
        if (x > s->box[2]) s->box[2] = x;
        s->area2 += area2_change[code];
        s->euler4 += euler4_change[code];
    } else if (run_heads[code][0] < 0) {
        new_set(forest, p, x, y);
        root = p;
    } else {
        const int8_t *heads = run_heads[code];
        const int32_t first = p + ring[heads[0]];
        /* most often a member joined straight to the set of the pixel joined last (still a root) */
        root = forest->parent[first] == last->root ? last->root : find_root(forest->parent, first);
        root = join_heads(forest, root, p, heads + 1, ring);
        add_to_set(forest, p, root, x, y, area2_change[code], euler4_change[code]);
    }
    last->pixel = p;
    last->root = root;
    return euler4_change[code];
}

static void ring_offsets(int32_t ring[8], Py_ssize_t row) {
    for (int i = 0; i < 8; i++) ring[i] = (int32_t)(ring_dy[i] * row + ring_dx[i]);
}

/* Components of u > c for every cut, and the number of holes of each level; with `records`, every
 * component's box; with `largest`, the largest contour where largest_live can tell. */
static int sweep_components(Forest *forest, Records *records, const Pixels *pixels, Levels *levels, int largest) {
    const Py_ssize_t row = pixels->padded_width;
    int32_t ring[8];
    ring_offsets(ring, row);
    int64_t euler4 = 0;
    Last last = {-2, -1};
    for (Py_ssize_t band = levels->count; band >= 1; band--) {
        const Py_ssize_t end = pixels->band_start[band + 1];
        for (Py_ssize_t k = pixels->band_start[band]; k < end; k++) {
            const int32_t p = pixels->order[2 * k], xy = pixels->order[2 * k + 1];
            euler4 += join_foreground(forest, p, xy & 0xffff, xy >> 16, row, ring, &last);
        }
        /* bands `band` and up are in: that is level band - 1 */
        const Py_ssize_t level = band - 1;
        levels->holes[level] = forest->n_live - (Py_ssize_t)(euler4 / 4);
        if (records && record_live(forest, records, levels->columns[level])) return -1;
        if (largest) levels->largest[5 * level + 4] = largest_live(forest, levels->largest + 5 * level);
    }
    return 0;
}

/* Holes of u > c for the cuts up to the highest one with holes.  At a level without holes all of
 * u <= c reaches the border: the band's pixels and every set so far join the outside without finds. */
static int sweep_holes(Forest *forest, Records *records, const Pixels *pixels, const Levels *levels,
                       Py_ssize_t last) {
    const int32_t row = (int32_t)pixels->padded_width, four[4] = {-row, 1, row, -1};
    static const int8_t lowest_bit[16] = {0, 0, 1, 0, 2, 0, 1, 0, 3, 0, 1, 0, 2, 0, 1, 0};
    uint8_t *in = forest->in;
    int32_t *parent = forest->parent;
    for (Py_ssize_t band = 0; band <= last; band++) {
        const Py_ssize_t end = pixels->band_start[band + 1];
        if (!levels->holes[band]) {
            for (Py_ssize_t k = pixels->band_start[band]; k < end; k++) {
                const int32_t p = pixels->order[2 * k];
                in[p] = 1;
                parent[p] = forest->outside;
            }
            for (Py_ssize_t i = 0; i < forest->n_live; i++) parent[forest->live[i]] = forest->outside;
            forest->n_live = 0;
            continue;
        }
        Last joined = {-2, -1}; /* the pixel joined last in this band, and its root */
        for (Py_ssize_t k = pixels->band_start[band]; k < end; k++) {
            const int32_t p = pixels->order[2 * k], xy = pixels->order[2 * k + 1];
            /* bit i: neighbour four[i] is in */
            const unsigned code = (unsigned)in[p - row] | (unsigned)in[p + 1] << 1 | (unsigned)in[p + row] << 2 |
                                  (unsigned)in[p - 1] << 3;
            in[p] = 1;
            unsigned rest = code; /* the neighbours whose sets are still to be joined */
            int32_t root = -1;
            if (p == joined.pixel + 1) {
                /* the left neighbour joined just before: its root is known.  The neighbour above is in
                 * its set if the one above-left is in (4-adjacent to both), the one below likewise with
                 * below-left; the right one is in the set of the one above (below) if above-right
                 * (below-right) is in */
                root = joined.root;
                rest &= ~8u;
                if (in[p - row - 1]) rest &= ~1u;
                if (in[p + row - 1]) rest &= ~4u;
                if (((code & 1u) && in[p - row + 1]) || ((code & 4u) && in[p + row + 1])) rest &= ~2u;
            } else if (!code) {
                new_set(forest, p, xy & 0xffff, xy >> 16);
                joined.pixel = joined.root = p;
                continue;
            }
            for (; rest; rest &= rest - 1) {
                const int32_t other = find_root(parent, p + four[lowest_bit[rest]]);
                root = root < 0 ? other : other == root ? root : merge_roots(forest, root, other);
            }
            add_to_set(forest, p, root, xy & 0xffff, xy >> 16, 0, 0);
            joined.pixel = p;
            joined.root = root;
        }
        if (levels->holes[band] && record_live(forest, records, levels->columns[band])) return -1;
    }
    return 0;
}

/* Pixels whose band in the filled mask (holes filled) is above their own, linked by that band:
 * filled_head[b], then link[pixel].  A flood from the border in band order (a bucket queue, one stack
 * per band) gives each pixel the lowest band, over all 4-paths to the border, of the highest band on
 * the path: the pixel lies in a hole at the levels from its own band up to below that one.  A pixel
 * filled at all lies in a hole at some level, so the flood stops after band last + 1. */
static void fill_holes(const Pixels *pixels, const uint8_t *values, Py_ssize_t height, Py_ssize_t width,
                       Py_ssize_t last, uint8_t *queued, uint16_t *own, int32_t *link, int32_t *filled_head) {
    const Py_ssize_t row = pixels->padded_width, padded_size = (height + 2) * row;
    const int32_t four[4] = {(int32_t)-row, 1, (int32_t)row, -1};
    int32_t stack[258];
    for (int b = 0; b < 258; b++) stack[b] = filled_head[b] = -1;
    memset(queued, 1, (size_t)padded_size); /* the frame stays queued: never entered */
    for (Py_ssize_t y = 1; y <= height; y++)
        for (Py_ssize_t x = 1; x <= width; x++) {
            const int32_t p = (int32_t)(y * row + x);
            own[p] = pixels->band_of_value[values[(y - 1) * width + x - 1]];
            if (y == 1 || y == height || x == 1 || x == width) { /* the border: the flood's start */
                link[p] = stack[own[p]];
                stack[own[p]] = p;
            } else {
                queued[p] = 0;
            }
        }
    for (Py_ssize_t b = 0; b <= last + 1; b++) {
        while (stack[b] >= 0) {
            const int32_t p = stack[b];
            stack[b] = link[p];
            if (b > own[p]) { /* in a hole below band b: filled up to it */
                link[p] = filled_head[b];
                filled_head[b] = p;
            }
            for (int i = 0; i < 4; i++) {
                const int32_t n = p + four[i];
                if (queued[n]) continue;
                queued[n] = 1;
                const Py_ssize_t at = own[n] > b ? own[n] : b;
                link[n] = stack[at];
                stack[at] = n;
            }
        }
    }
}

/* The largest contour of the levels left open (status -1, `open` the lowest of them): components of
 * the filled mask, that is of the pixels in band order with the filled ones moved up to their filled
 * band. */
static void sweep_filled(Forest *forest, const Pixels *pixels, Levels *levels, Py_ssize_t open,
                         const int32_t *link, const int32_t *filled_head) {
    const Py_ssize_t row = pixels->padded_width;
    int32_t ring[8];
    ring_offsets(ring, row);
    const uint8_t *in = forest->in;
    Last last = {-2, -1};
    for (Py_ssize_t band = levels->count; band > open; band--) {
        for (int32_t p = filled_head[band], next; p >= 0; p = next) {
            next = link[p];
            join_foreground(forest, p, (int32_t)(p % row - 1), (int32_t)(p / row - 1), row, ring, &last);
        }
        const Py_ssize_t end = pixels->band_start[band + 1];
        for (Py_ssize_t k = pixels->band_start[band]; k < end; k++) {
            const int32_t p = pixels->order[2 * k], xy = pixels->order[2 * k + 1];
            if (!in[p]) join_foreground(forest, p, xy & 0xffff, xy >> 16, row, ring, &last);
        }
        const Py_ssize_t level = band - 1;
        if (levels->largest[5 * level + 4] < 0)
            levels->largest[5 * level + 4] = largest_live(forest, levels->largest + 5 * level);
    }
}

/* Counting sort of one image's pixels by band (see Pixels).  Neighbours along a row often share a
 * band, and each count or write position would wait for the previous one: the rows are cut into four
 * strips with counters of their own, visited in turn pixel by pixel (four independent chains).  Within
 * a band, one strip's pixels come before the next strip's: still raster order. */
enum { STRIPS = 4 };

static void sort_pixels(Pixels *pixels, const uint8_t *values, Py_ssize_t height, Py_ssize_t width,
                        const Levels *levels) {
    const Py_ssize_t padded_width = pixels->padded_width;
    const Py_ssize_t strip_rows = height / STRIPS; /* strip q: rows from q x strip_rows, the last one to the end */
    uint16_t *band_of_value = pixels->band_of_value;
    for (int v = 0, band = 0; v < 256; v++) {
        while (band < levels->count && levels->cuts[band] < v) band++;
        band_of_value[v] = (uint16_t)band;
    }
#define BAND(y, x) band_of_value[values[(y) * width + (x)]]
    Py_ssize_t fill[STRIPS][258] = {{0}}, total = 0;
    for (Py_ssize_t r = 0; r < strip_rows; r++)
        for (Py_ssize_t x = 0; x < width; x++)
            for (int q = 0; q < STRIPS; q++) fill[q][BAND(q * strip_rows + r, x)]++;
    for (Py_ssize_t y = STRIPS * strip_rows; y < height; y++)
        for (Py_ssize_t x = 0; x < width; x++) fill[STRIPS - 1][BAND(y, x)]++;
    for (Py_ssize_t b = 0; b <= levels->count; b++) { /* counts to first positions */
        pixels->band_start[b] = total;
        for (int q = 0; q < STRIPS; q++) {
            const Py_ssize_t count = fill[q][b];
            fill[q][b] = total;
            total += count;
        }
    }
    pixels->band_start[levels->count + 1] = total;
#define PLACE(q, y, x)                                                        \
    do {                                                                      \
        const Py_ssize_t k = fill[q][BAND(y, x)]++;                           \
        pixels->order[2 * k] = (int32_t)(((y) + 1) * padded_width + (x) + 1); \
        pixels->order[2 * k + 1] = (int32_t)((y) << 16 | (x));                \
    } while (0)
    for (Py_ssize_t r = 0; r < strip_rows; r++)
        for (Py_ssize_t x = 0; x < width; x++)
            for (int q = 0; q < STRIPS; q++) PLACE(q, q * strip_rows + r, x);
    for (Py_ssize_t y = STRIPS * strip_rows; y < height; y++)
        for (Py_ssize_t x = 0; x < width; x++) PLACE(STRIPS - 1, y, x);
#undef PLACE
#undef BAND
}

/* Work space for one call: sized for the maps' height and width, reused image after image. */
typedef struct {
    Forest forest;
    Pixels pixels;
    Levels levels;
    int32_t *link, filled_head[258];
    uint16_t *own;
} Space;

/* Resets the forest for a pass: nothing in; with_frame: the frame in, as one outside set. */
static void reset_forest(Forest *forest, Py_ssize_t height, Py_ssize_t width, int with_frame) {
    const Py_ssize_t padded_width = width + 2, padded_size = (height + 2) * padded_width;
    memset(forest->in, 0, (size_t)padded_size);
    forest->n_live = 0;
    forest->outside = with_frame ? 0 : -1;
    if (!with_frame) return;
    /* the one-pixel frame: joined from the start, one outside set rooted at its first cell */
    for (Py_ssize_t x = 0; x < padded_width; x++) {
        forest->in[x] = forest->in[padded_size - 1 - x] = 1;
        forest->parent[x] = forest->parent[padded_size - 1 - x] = 0;
    }
    for (Py_ssize_t y = 1; y <= height; y++) {
        forest->in[y * padded_width] = forest->in[y * padded_width + width + 1] = 1;
        forest->parent[y * padded_width] = forest->parent[y * padded_width + width + 1] = 0;
    }
}

/* The passes one image needs; returns -1 when out of memory. */
static int image_boxes(Space *space, const uint8_t *values, Py_ssize_t height, Py_ssize_t width, int all_contours,
                       int largest, Records *components, Records *holes, Records *largest_records) {
    Forest *forest = &space->forest;
    Levels *levels = &space->levels;
    if (!levels->count) return 0;
    sort_pixels(&space->pixels, values, height, width, levels);
    memset(levels->largest, 0, (size_t)levels->count * 5 * sizeof(int32_t));
    reset_forest(forest, height, width, 0);
    if (sweep_components(forest, all_contours ? components : NULL, &space->pixels, levels, largest)) return -1;
    Py_ssize_t last = levels->count - 1, open = 0; /* the highest level with holes, the lowest left open */
    while (last >= 0 && !levels->holes[last]) last--;
    if (all_contours && last >= 0) {
        reset_forest(forest, height, width, 1);
        if (sweep_holes(forest, holes, &space->pixels, levels, last)) return -1;
    }
    while (largest && open < levels->count && levels->largest[5 * open + 4] >= 0) open++;
    if (largest && open < levels->count) {
        fill_holes(&space->pixels, values, height, width, last, forest->in, space->own, space->link,
                   space->filled_head);
        reset_forest(forest, height, width, 0);
        sweep_filled(forest, &space->pixels, levels, open, space->link, space->filled_head);
    }
    if (largest)
        for (Py_ssize_t level = 0; level < levels->count; level++)
            if (levels->largest[5 * level + 4] &&
                records_push(largest_records, levels->columns[level], levels->largest + 5 * level))
                return -1;
    return 0;
}

/* A C-contiguous buffer of the given dimensions and item size, or an error naming the argument. */
static int get_array(PyObject *object, Py_buffer *view, const char *name, int ndim, Py_ssize_t itemsize,
                     const char *kinds) {
    if (PyObject_GetBuffer(object, view, PyBUF_C_CONTIGUOUS | PyBUF_FORMAT) < 0) return -1;
    const char *format = view->format ? view->format : "B";
    if (*format == '<' || *format == '=' || *format == '@') format++;
    if (view->ndim != ndim || view->itemsize != itemsize || !strchr(kinds, *format) || format[1]) {
        PyErr_Format(PyExc_ValueError, "level_boxes: %s must be a C-contiguous %d-D array of %zd-byte integers",
                     name, ndim, itemsize);
        PyBuffer_Release(view);
        return -1;
    }
    return 0;
}

static PyObject *level_boxes(PyObject *self, PyObject *args, PyObject *kwargs) {
    static char *keywords[] = {"maps", "cuts", "all_contours", "largest", NULL};
    PyObject *maps_object, *cuts_object, *result = NULL;
    int all_contours = 1, largest = 0;
    Py_buffer maps_view, cuts_view;
    (void)self;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "OO|$pp", keywords, &maps_object, &cuts_object, &all_contours,
                                     &largest))
        return NULL;
    if (get_array(maps_object, &maps_view, "maps", 3, 1, "B")) return NULL;
    if (get_array(cuts_object, &cuts_view, "cuts", 2, 4, "il")) { PyBuffer_Release(&maps_view); return NULL; }
    const Py_ssize_t batch = maps_view.shape[0], height = maps_view.shape[1], width = maps_view.shape[2];
    const Py_ssize_t n_columns = cuts_view.shape[1];
    const uint8_t *maps = maps_view.buf;
    const int32_t *cuts = cuts_view.buf;
    Records components = {0}, holes = {0}, largest_records = {0};
    Space space = {0};
    int32_t *level_buffer = NULL;
    if (cuts_view.shape[0] != batch || height < 1 || width < 1 || height >= 32767 || width >= 32767) {
        PyErr_SetString(PyExc_ValueError,
                        "level_boxes: expected maps (B, H, W) with sides in [1, 32766] and cuts (B, T)");
        goto done;
    }
    for (Py_ssize_t i = 0; i < batch * n_columns; i++) {
        if (cuts[i] < 0 || cuts[i] > 255 || (i % n_columns && cuts[i] < cuts[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "level_boxes: each row of cuts must be nondecreasing values in [0, 255]");
            goto done;
        }
    }
    const Py_ssize_t padded_size = (height + 2) * (width + 2), n_pixels = height * width;
    const Py_ssize_t n_levels = n_columns < 256 ? n_columns : 256; /* distinct cuts per image, at most */
    space.pixels.order = malloc((size_t)n_pixels * 2 * sizeof(int32_t));
    space.forest.parent = malloc((size_t)padded_size * sizeof(int32_t));
    space.forest.live = malloc((size_t)padded_size * sizeof(int32_t));
    space.forest.set = malloc((size_t)padded_size * sizeof(SetInfo));
    space.forest.in = malloc((size_t)padded_size + 4); /* + 4: the 4-byte loads of three_flags */
    level_buffer = malloc((size_t)(n_levels + 1) * 7 * sizeof(int32_t));
    space.levels.holes = malloc((size_t)(n_levels + 1) * sizeof(Py_ssize_t));
    if (largest) {
        space.link = malloc((size_t)padded_size * sizeof(int32_t));
        space.own = malloc((size_t)padded_size * sizeof(uint16_t));
    }
    if (!space.pixels.order || !space.forest.parent || !space.forest.live || !space.forest.set || !space.forest.in ||
        !level_buffer || !space.levels.holes || (largest && (!space.link || !space.own))) {
        PyErr_NoMemory();
        goto done;
    }
    memset(space.forest.in + padded_size, 0, 4);
    space.pixels.padded_width = width + 2;
    space.levels.cuts = level_buffer;
    space.levels.columns = level_buffer + n_levels + 1;
    space.levels.largest = level_buffer + 2 * (n_levels + 1);

    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t b = 0; b < batch && !failed; b++) {
        const int32_t *row = cuts + b * n_columns;
        Levels *levels = &space.levels;
        levels->count = 0;
        for (Py_ssize_t t = 0; t < n_columns; t++)
            if (!t || row[t] != row[t - 1]) {
                levels->cuts[levels->count] = row[t];
                levels->columns[levels->count++] = (int32_t)t;
            }
        components.image = holes.image = largest_records.image = (int32_t)b;
        failed = image_boxes(&space, maps + b * n_pixels, height, width, all_contours, largest, &components, &holes,
                             &largest_records);
    }
    Py_END_ALLOW_THREADS
    if (failed) { PyErr_NoMemory(); goto done; }
    result = Py_BuildValue("(NNN)", records_bytes(&components), records_bytes(&holes),
                           records_bytes(&largest_records));
done:
    free(space.pixels.order); free(space.forest.parent); free(space.forest.live); free(space.forest.set);
    free(space.forest.in); free(space.link); free(space.own); free(level_buffer); free(space.levels.holes);
    free(components.data); free(holes.data); free(largest_records.data);
    PyBuffer_Release(&maps_view);
    PyBuffer_Release(&cuts_view);
    return result;
}

static PyMethodDef methods[] = {
    {"level_boxes", (PyCFunction)(void (*)(void))level_boxes, METH_VARARGS | METH_KEYWORDS,
     "level_boxes(maps, cuts, *, all_contours=True, largest=False) -> (components, holes, largest)\n\n"
     "maps: uint8 (B, H, W); cuts: int32 (B, T), each row nondecreasing in [0, 255].\n"
     "For each image and each distinct cut c of its row, as bytes of int32 records (image, column, x0,\n"
     "y0, x1, y1), column the first one holding c and the bounds inclusive pixel coordinates:\n"
     "with all_contours, the boxes of the 8-connected components of u > c and of the 4-connected holes\n"
     "of that mask (sets of u <= c not reaching the image border); with largest, the box of the\n"
     "component whose outer contour has the largest cv2.contourArea, the first in OpenCV's order on\n"
     "ties (one record per level with foreground)."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_levelsets",
                                    "Contour boxes of all level sets of a uint8 map.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__levelsets(void) {
    build_tables();
    return PyModule_Create(&module);
}
