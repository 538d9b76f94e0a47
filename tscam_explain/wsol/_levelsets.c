/* Bounding boxes of the components and holes of every level set of a uint8 map, in one pass each.
 *
 * Why C: MaxBoxAccV2 needs, at up to a hundred cut levels c, the box of every contour of the mask
 * u > c.  OpenCV answers one level per call, and numpy has no sequential union-find, so both spend
 * time in proportion to levels x pixels.  Building the level sets incrementally (pixels joined to
 * their neighbours by union-find, band by band between consecutive cuts) visits each pixel once for
 * all levels.  sweep.py keeps a numpy/OpenCV path that gives the same boxes where this module is
 * not built.
 *
 *   components: 8-connected sets of u > c.  Pixels join from the highest band down; once every value
 *               above c is in, the box of each live set is recorded for level c.  The same pass counts
 *               the Euler number (components - holes) from each joining pixel's neighbours, so
 *               the number of holes of every level is known.
 *   holes:      4-connected sets of u <= c that do not reach the image border (OpenCV pads the mask
 *               with zeros, so a set reaching the border is outside).  Pixels join from the lowest
 *               band up, the one-pixel frame around the image being one "outside" set from the start;
 *               the pass stops after the highest level that has holes.
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
 * run_heads:     ring positions of one neighbour per circular run of present neighbours (up to 4,
 *                -1 after the last); neighbours within a run touch each other, so they are already
 *                one set, and only run heads need a union. */
static int8_t euler4_change[256];
static int8_t run_heads[256][4];

static int quad_euler4(int count, int diagonal) {
    return count == 1 ? 1 : count == 3 ? -1 : (count == 2 && diagonal) ? -2 : 0;
}

static void build_tables(void) {
    /* the four 2x2 windows holding the pixel, by ring position: corner, then its two sides */
    static const int windows[4][3] = {{0, 1, 7}, {2, 1, 3}, {4, 3, 5}, {6, 5, 7}};
    for (int code = 0; code < 256; code++) {
        int present[8];
        for (int i = 0; i < 8; i++) present[i] = code >> ring_bit[i] & 1;
        int change = 0;
        for (int w = 0; w < 4; w++) {
            int corner = present[windows[w][0]];
            int before = corner + present[windows[w][1]] + present[windows[w][2]];
            /* a diagonal pair before: both sides without the corner; after: the pixel and the corner */
            change += quad_euler4(before + 1, before == 1 && corner) - quad_euler4(before, before == 2 && !corner);
        }
        euler4_change[code] = (int8_t)change;
        int count = 0;
        memset(run_heads[code], -1, sizeof(run_heads[code]));
        for (int i = 0; i < 8; i++)
            if (present[i] && !present[(i + 7) % 8]) run_heads[code][count++] = (int8_t)i;
        if (code == 255) run_heads[code][0] = 0; /* one run all around */
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

static int records_push(Records *records, int32_t column, int32_t x0, int32_t y0, int32_t x1, int32_t y1) {
    if (records->count == records->capacity) {
        Py_ssize_t capacity = records->capacity ? 2 * records->capacity : 4096;
        int32_t *data = realloc(records->data, (size_t)capacity * RECORD_FIELDS * sizeof(int32_t));
        if (!data) return -1;
        records->data = data;
        records->capacity = capacity;
    }
    int32_t *row = records->data + RECORD_FIELDS * records->count++;
    row[0] = records->image; row[1] = column; row[2] = x0; row[3] = y0; row[4] = x1; row[5] = y1;
    return 0;
}

static PyObject *records_bytes(const Records *records) {
    return PyBytes_FromStringAndSize(records->count ? (const char *)records->data : "",
                                     records->count * RECORD_FIELDS * (Py_ssize_t)sizeof(int32_t));
}

/* Disjoint sets over the padded pixel grid; roots carry their set's box, and the live
 * roots (every root but the outside one) are kept in a list for recording. */
typedef struct {
    int32_t *parent, *x0, *y0, *x1, *y1, *live, *slot;
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

static inline int64_t box_area(const Forest *forest, int32_t root) {
    return (int64_t)(forest->x1[root] - forest->x0[root] + 1) * (forest->y1[root] - forest->y0[root] + 1);
}

/* Joins two roots (the outside set always absorbs; otherwise the one with the larger box, a cheap
 * stand-in for the larger set that keeps the trees shallow); returns the surviving root. */
static int32_t merge_roots(Forest *forest, int32_t keep, int32_t gone) {
    if (gone == forest->outside || (keep != forest->outside && box_area(forest, gone) > box_area(forest, keep))) {
        int32_t swap = keep; keep = gone; gone = swap;
    }
    forest->parent[gone] = keep;
    int32_t slot = forest->slot[gone], last = forest->live[--forest->n_live];
    forest->live[slot] = last;
    forest->slot[last] = slot;
    if (keep != forest->outside) {
        if (forest->x0[gone] < forest->x0[keep]) forest->x0[keep] = forest->x0[gone];
        if (forest->y0[gone] < forest->y0[keep]) forest->y0[keep] = forest->y0[gone];
        if (forest->x1[gone] > forest->x1[keep]) forest->x1[keep] = forest->x1[gone];
        if (forest->y1[gone] > forest->y1[keep]) forest->y1[keep] = forest->y1[gone];
    }
    return keep;
}

static inline void new_set(Forest *forest, int32_t p, int32_t x, int32_t y) {
    forest->parent[p] = p;
    forest->x0[p] = forest->x1[p] = x;
    forest->y0[p] = forest->y1[p] = y;
    forest->slot[p] = (int32_t)forest->n_live;
    forest->live[forest->n_live++] = p;
}

static inline void add_to_set(Forest *forest, int32_t p, int32_t root, int32_t x, int32_t y) {
    forest->parent[p] = root;
    if (root == forest->outside) return;
    if (x < forest->x0[root]) forest->x0[root] = x;
    if (x > forest->x1[root]) forest->x1[root] = x;
    if (y < forest->y0[root]) forest->y0[root] = y;
    if (y > forest->y1[root]) forest->y1[root] = y;
}

static int record_live(const Forest *forest, Records *records, int32_t column) {
    for (Py_ssize_t i = 0; i < forest->n_live; i++) {
        int32_t root = forest->live[i];
        if (records_push(records, column, forest->x0[root], forest->y0[root], forest->x1[root], forest->y1[root]))
            return -1;
    }
    return 0;
}

/* An image's pixels by band: band b holds the values v with cuts[b - 1] < v <= cuts[b], so the
 * mask u > cuts[k] is bands k + 1 and up, and u <= cuts[k] bands 0 to k.  Within a band, pixels
 * are in raster order (any order gives the same sets at the cuts; this one is cache-friendly). */
typedef struct {
    int32_t *order; /* by band: padded pixel index, then y << 16 | x, for each pixel */
    Py_ssize_t band_start[258];
    Py_ssize_t padded_width;
} Pixels;

/* The distinct cuts of one image (increasing) and the first threshold column of each. */
typedef struct {
    int32_t *cuts, *columns;
    Py_ssize_t count;
} Levels;

/* Components of u > c for every cut; holes[k] gets the number of holes of cut k's mask. */
static int sweep_components(Forest *forest, Records *records, const Pixels *pixels, const Levels *levels,
                            Py_ssize_t *holes) {
    const Py_ssize_t row = pixels->padded_width;
    int32_t ring[8]; /* padded offset of each ring position */
    for (int i = 0; i < 8; i++) ring[i] = (int32_t)(ring_dy[i] * row + ring_dx[i]);
    uint8_t *in = forest->in;
    int64_t euler4 = 0;
    for (Py_ssize_t band = levels->count; band >= 1; band--) {
        const Py_ssize_t end = pixels->band_start[band + 1];
        for (Py_ssize_t k = pixels->band_start[band]; k < end; k++) {
            const int32_t p = pixels->order[2 * k], xy = pixels->order[2 * k + 1];
            const int32_t x = xy & 0xffff, y = xy >> 16;
            const unsigned code = three_flags(in + p - row - 1) | (unsigned)in[p + 1] << 3 |
                                  three_flags(in + p + row - 1) << 4 | (unsigned)in[p - 1] << 7;
            euler4 += euler4_change[code];
            in[p] = 1;
            const int8_t *heads = run_heads[code];
            if (heads[0] < 0) {
                new_set(forest, p, x, y);
                continue;
            }
            int32_t root = find_root(forest->parent, p + ring[heads[0]]);
            for (int i = 1; i < 4 && heads[i] >= 0; i++) {
                int32_t other = find_root(forest->parent, p + ring[heads[i]]);
                if (other != root) root = merge_roots(forest, root, other);
            }
            add_to_set(forest, p, root, x, y);
        }
        /* bands `band` and up are in: that is level band - 1 */
        holes[band - 1] = forest->n_live - (Py_ssize_t)(euler4 / 4);
        if (record_live(forest, records, levels->columns[band - 1])) return -1;
    }
    return 0;
}

/* Holes of u > c for the cuts up to the highest one with holes. */
static int sweep_holes(Forest *forest, Records *records, const Pixels *pixels, const Levels *levels,
                       const Py_ssize_t *holes) {
    Py_ssize_t last = levels->count - 1;
    while (last >= 0 && holes[last] == 0) last--;
    if (last < 0) return 0;
    const int32_t row = (int32_t)pixels->padded_width, four[4] = {-row, 1, row, -1};
    int32_t touching[16][4]; /* by which of the four neighbours are in (bit i: four[i]), their offsets */
    int touching_count[16];
    for (unsigned code = 0; code < 16; code++) {
        touching_count[code] = 0;
        for (int i = 0; i < 4; i++)
            if (code >> i & 1) touching[code][touching_count[code]++] = four[i];
    }
    uint8_t *in = forest->in;
    for (Py_ssize_t band = 0; band <= last; band++) {
        const Py_ssize_t end = pixels->band_start[band + 1];
        for (Py_ssize_t k = pixels->band_start[band]; k < end; k++) {
            const int32_t p = pixels->order[2 * k], xy = pixels->order[2 * k + 1];
            const unsigned code = (unsigned)in[p - row] | (unsigned)in[p + 1] << 1 | (unsigned)in[p + row] << 2 |
                                  (unsigned)in[p - 1] << 3;
            in[p] = 1;
            const int count = touching_count[code];
            if (!count) {
                new_set(forest, p, xy & 0xffff, xy >> 16);
                continue;
            }
            int32_t root = find_root(forest->parent, p + touching[code][0]);
            for (int i = 1; i < count; i++) {
                int32_t other = find_root(forest->parent, p + touching[code][i]);
                if (other != root) root = merge_roots(forest, root, other);
            }
            add_to_set(forest, p, root, xy & 0xffff, xy >> 16);
        }
        if (holes[band] && record_live(forest, records, levels->columns[band])) return -1;
    }
    return 0;
}

/* Counting sort of one image's pixels by band (see Pixels). */
static void sort_pixels(Pixels *pixels, const uint8_t *values, Py_ssize_t height, Py_ssize_t width,
                        const Levels *levels) {
    const Py_ssize_t n_pixels = height * width, padded_width = pixels->padded_width;
    uint16_t band_of_value[256];
    Py_ssize_t *start = pixels->band_start, fill[257];
    for (int v = 0, band = 0; v < 256; v++) {
        while (band < levels->count && levels->cuts[band] < v) band++;
        band_of_value[v] = (uint16_t)band;
    }
    memset(start, 0, sizeof(pixels->band_start));
    for (Py_ssize_t i = 0; i < n_pixels; i++) start[band_of_value[values[i]] + 1]++;
    for (Py_ssize_t b = 0; b <= levels->count; b++) start[b + 1] += start[b];
    memcpy(fill, start, sizeof(fill));
    for (Py_ssize_t y = 0; y < height; y++)
        for (Py_ssize_t x = 0; x < width; x++) {
            Py_ssize_t k = fill[band_of_value[values[y * width + x]]]++;
            pixels->order[2 * k] = (int32_t)((y + 1) * padded_width + x + 1);
            pixels->order[2 * k + 1] = (int32_t)(y << 16 | x);
        }
}

/* Both passes for one image; returns -1 when out of memory. */
static int image_boxes(Forest *forest, const Pixels *pixels, const Levels *levels, Py_ssize_t *holes,
                       Records *components, Records *hole_records, Py_ssize_t height, Py_ssize_t width) {
    const Py_ssize_t padded_width = width + 2, padded_size = (height + 2) * padded_width;
    if (!levels->count) return 0;
    memset(forest->in, 0, (size_t)padded_size);
    forest->n_live = 0;
    forest->outside = -1;
    if (sweep_components(forest, components, pixels, levels, holes)) return -1;
    /* the one-pixel frame: joined from the start, one outside set rooted at its first cell */
    memset(forest->in, 0, (size_t)padded_size);
    forest->n_live = 0;
    forest->outside = 0;
    for (Py_ssize_t x = 0; x < padded_width; x++) {
        forest->in[x] = forest->in[padded_size - 1 - x] = 1;
        forest->parent[x] = forest->parent[padded_size - 1 - x] = 0;
    }
    for (Py_ssize_t y = 1; y <= height; y++) {
        forest->in[y * padded_width] = forest->in[y * padded_width + width + 1] = 1;
        forest->parent[y * padded_width] = forest->parent[y * padded_width + width + 1] = 0;
    }
    return sweep_holes(forest, hole_records, pixels, levels, holes);
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

static PyObject *level_boxes(PyObject *self, PyObject *args) {
    PyObject *maps_object, *cuts_object, *result = NULL;
    Py_buffer maps_view, cuts_view;
    (void)self;
    if (!PyArg_ParseTuple(args, "OO", &maps_object, &cuts_object)) return NULL;
    if (get_array(maps_object, &maps_view, "maps", 3, 1, "B")) return NULL;
    if (get_array(cuts_object, &cuts_view, "cuts", 2, 4, "il")) { PyBuffer_Release(&maps_view); return NULL; }
    const Py_ssize_t batch = maps_view.shape[0], height = maps_view.shape[1], width = maps_view.shape[2];
    const Py_ssize_t n_columns = cuts_view.shape[1];
    const uint8_t *maps = maps_view.buf;
    const int32_t *cuts = cuts_view.buf;
    Records components = {0}, holes = {0};
    Forest forest = {0};
    Pixels pixels = {0};
    Levels levels = {0};
    int32_t *order = NULL, *buffer = NULL, *level_buffer = NULL;
    Py_ssize_t *hole_counts = NULL;
    if (cuts_view.shape[0] != batch || height < 1 || width < 1 || height >= 32767 || width >= 32767) {
        PyErr_SetString(PyExc_ValueError, "level_boxes: expected maps (B, H, W) with sides in [1, 32766] and cuts (B, T)");
        goto done;
    }
    for (Py_ssize_t i = 0; i < batch * n_columns; i++) {
        if (cuts[i] < 0 || cuts[i] > 255 || (i % n_columns && cuts[i] < cuts[i - 1])) {
            PyErr_SetString(PyExc_ValueError, "level_boxes: each row of cuts must be nondecreasing values in [0, 255]");
            goto done;
        }
    }
    const Py_ssize_t padded_size = (height + 2) * (width + 2), n_pixels = height * width;
    order = malloc((size_t)n_pixels * 2 * sizeof(int32_t));
    buffer = malloc((size_t)padded_size * 7 * sizeof(int32_t));
    level_buffer = malloc((size_t)(n_columns + 1) * 2 * sizeof(int32_t));
    hole_counts = malloc((size_t)(n_columns + 1) * sizeof(Py_ssize_t));
    forest.in = malloc((size_t)padded_size + 4); /* + 4: the 4-byte loads of three_flags */
    if (!order || !buffer || !level_buffer || !hole_counts || !forest.in) { PyErr_NoMemory(); goto done; }
    forest.parent = buffer;
    forest.x0 = buffer + padded_size; forest.y0 = buffer + 2 * padded_size;
    forest.x1 = buffer + 3 * padded_size; forest.y1 = buffer + 4 * padded_size;
    forest.live = buffer + 5 * padded_size; forest.slot = buffer + 6 * padded_size;
    memset(forest.in + padded_size, 0, 4);
    pixels.order = order;
    pixels.padded_width = width + 2;
    levels.cuts = level_buffer;
    levels.columns = level_buffer + n_columns + 1;

    int failed = 0;
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t b = 0; b < batch && !failed; b++) {
        const int32_t *row = cuts + b * n_columns;
        levels.count = 0;
        for (Py_ssize_t t = 0; t < n_columns; t++)
            if (!t || row[t] != row[t - 1]) {
                levels.cuts[levels.count] = row[t];
                levels.columns[levels.count++] = (int32_t)t;
            }
        memset(hole_counts, 0, (size_t)(n_columns + 1) * sizeof(Py_ssize_t));
        components.image = holes.image = (int32_t)b;
        sort_pixels(&pixels, maps + b * n_pixels, height, width, &levels);
        failed = image_boxes(&forest, &pixels, &levels, hole_counts, &components, &holes, height, width);
    }
    Py_END_ALLOW_THREADS
    if (failed) { PyErr_NoMemory(); goto done; }
    result = Py_BuildValue("(NN)", records_bytes(&components), records_bytes(&holes));
done:
    free(order); free(buffer); free(level_buffer); free(hole_counts); free(forest.in);
    free(components.data); free(holes.data);
    PyBuffer_Release(&maps_view);
    PyBuffer_Release(&cuts_view);
    return result;
}

static PyMethodDef methods[] = {
    {"level_boxes", level_boxes, METH_VARARGS,
     "level_boxes(maps, cuts) -> (components, holes)\n\n"
     "maps: uint8 (B, H, W); cuts: int32 (B, T), each row nondecreasing in [0, 255].\n"
     "Boxes of the 8-connected components of u > c and of the 4-connected holes of that mask (sets of\n"
     "u <= c not reaching the image border), for each image and each distinct cut c of its row, as\n"
     "bytes of int32 records (image, column, x0, y0, x1, y1): column is the first one holding c, and\n"
     "the bounds are inclusive pixel coordinates."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_levelsets",
                                    "Component and hole boxes of all level sets of a uint8 map.", -1, methods,
                                    NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__levelsets(void) {
    build_tables();
    return PyModule_Create(&module);
}
