/*
 * _allocinfo_scan: the allocinfo text parser's compiled fast path.
 *
 * Why this exists: a Python parser of /proc/allocinfo spends most of its time creating one
 * object per field per line (~1.4 us/line measured), 10x the cost of merely reading the file.
 * This scanner validates every line of an allocinfo body (the text after its header) in one
 * pass and splits it into typed columns -- the numbers as packed int64/int32 arrays, the
 * strings as Arrow-style (offsets, data) pairs -- without creating a Python object per line.
 * Python code wraps the columns zero-copy (memoryview casts, pyarrow buffers) and builds
 * record objects only when a caller asks for them.
 *
 * It accepts exactly what the pure-Python fast path (allocinfo._FAST) accepts, restricted to
 * an alphabet where the two cannot disagree: printable ASCII, space, tab and '\n' (a text
 * ending in '\n' yields no extra empty line, as with str.splitlines()). Anything
 * else (a NUMA sub-line, a comment, "...", a malformed or truncated line, a control or
 * non-ASCII byte, a number too long for int64) makes scan() return None and the caller takes
 * the Python path, which places errors on their line. tests/unit/test_allocinfo_scan.py checks
 * that both paths agree on generated input.
 *
 * Line grammar (mm/alloc_tag.c prints it; the regex form is allocinfo._FAST):
 *   [ \t]* BYTES [ \t]+ CALLS [ \t]+ FILE ':' LINE ( [ \t]+ '[' MODULE ']' )?
 *   [ \t]+ 'func:' FUNCTION ( [ \t]+ KEY ':' VALUE )* [ \t]*
 * BYTES, CALLS: -?[0-9]+ ; FILE: non-blank, split at its last ':' ; LINE: [0-9]+ ;
 * MODULE: no blank, no ']' ; FUNCTION: non-blank ; KEY: no blank, no ':' ; VALUE: non-blank.
 *
 * scan(text: str | bytes, start: int = 0) -> None | tuple, for the body text[start:]:
 *   (n, nbytes, calls, line, accurate,
 *    file_offsets, file_data, module_offsets, module_data,
 *    function_offsets, function_data, extras_offsets, extras_data)
 * nbytes/calls: n int64; line: n int32; accurate: n uint8 (0 when the last `accurate:` extra
 * says "no"); *_offsets: n+1 int32 into *_data (Arrow string layout); extras_data holds each
 * line's extras text as printed ("accurate:no k:v"), empty when none. Native byte order.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MAX_INT64_DIGITS 18 /* any 18-digit decimal fits int64; longer: Python path */
#define MAX_LINE_DIGITS 9   /* any 9-digit decimal fits int32 */

/*
 * Output columns are written straight into bytes objects allocated at their largest possible
 * size and shrunk at the end (_PyBytes_Resize): no second copy, and no page touched twice.
 */
struct outbuf {
	PyObject *obj;
	char *p;
};

struct strcol {
	struct outbuf off, data;
	int32_t used;
};

struct columns {
	struct outbuf nbytes, calls, line, accurate;
	struct strcol file, module, function, extras;
};

/*
 * Byte classes. Every byte of a line is walked by skip_blanks() or token_end(), and both stop
 * at a BAD byte, where no grammar rule accepts it: so a control or non-ASCII byte anywhere
 * fails its line without a separate pass over the text.
 */
enum { WORD, BLANK, BAD };
static unsigned char byte_class[256];

static void init_byte_class(void)
{
	int c;

	for (c = 0; c < 256; c++)
		byte_class[c] = (c < 0x20 || c > 0x7e) ? BAD : WORD;
	byte_class[' '] = BLANK;
	byte_class['\t'] = BLANK;
}

/*
 * The two loops every byte goes through, eight bytes at a time while they are all of the
 * class looked for (kernel lines are runs of 8-12 blanks of padding and 10-30-byte tokens),
 * then byte by byte to the exact stop.
 */
#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

static uint64_t load8(const char *p)
{
	uint64_t w;

	memcpy(&w, p, sizeof(w));
	return w;
}

/* Some byte of w is < 0x21 (blank, control) or > 0x7e (DEL, non-ASCII): not all WORD. */
static int has_non_word(uint64_t w)
{
	return (((w - ONES * 0x21) & ~w) | ((w + ONES * (127 - 0x7e)) | w)) & HIGHS ? 1 : 0;
}

static const char *skip_blanks(const char *p, const char *end)
{
	while (end - p >= 8 && load8(p) == ONES * ' ')
		p += 8;
	while (p < end && byte_class[(unsigned char)*p] == BLANK)
		p++;
	return p;
}

static const char *token_end(const char *p, const char *end)
{
	while (end - p >= 8 && !has_non_word(load8(p)))
		p += 8;
	while (p < end && byte_class[(unsigned char)*p] == WORD)
		p++;
	return p;
}

/* -?[0-9]+ filling the whole token; 0 on anything else. */
static int parse_int64(const char *p, const char *end, int64_t *out)
{
	int neg = 0;
	int64_t v = 0;

	if (p < end && *p == '-') {
		neg = 1;
		p++;
	}
	if (p == end || end - p > MAX_INT64_DIGITS)
		return 0;
	for (; p < end; p++) {
		if (*p < '0' || *p > '9')
			return 0;
		v = v * 10 + (*p - '0');
	}
	*out = neg ? -v : v;
	return 1;
}

static void put_str(struct strcol *c, Py_ssize_t row, const char *p, const char *end)
{
	memcpy(c->data.p + c->used, p, (size_t)(end - p));
	c->used += (int32_t)(end - p);
	((int32_t *)c->off.p)[row + 1] = c->used;
}

/* One line [p, end) into row `row`; 1 if it is a record, 0 if not. */
static int scan_line(const char *p, const char *end, Py_ssize_t row, struct columns *cols)
{
	const char *t, *colon, *q, *extras_start = NULL, *extras_end = NULL;
	int accurate = 1;
	int64_t line;

	p = skip_blanks(p, end);
	t = token_end(p, end);
	if (!parse_int64(p, t, &((int64_t *)cols->nbytes.p)[row]) || t == end)
		return 0;
	p = skip_blanks(t, end);
	t = token_end(p, end);
	if (p == t || !parse_int64(p, t, &((int64_t *)cols->calls.p)[row]) || t == end)
		return 0;

	/* FILE ':' LINE, split at the token's last ':' */
	p = skip_blanks(t, end);
	t = token_end(p, end);
	colon = NULL;
	for (q = t; q > p; q--) {
		if (q[-1] == ':') {
			colon = q - 1;
			break;
		}
	}
	if (!colon || colon == p || t - (colon + 1) > MAX_LINE_DIGITS)
		return 0;
	if (!parse_int64(colon + 1, t, &line) || colon[1] == '-' || t == end)
		return 0;
	((int32_t *)cols->line.p)[row] = (int32_t)line;
	put_str(&cols->file, row, p, colon);

	/* optional [MODULE] */
	p = skip_blanks(t, end);
	t = token_end(p, end);
	if (p < t && *p == '[') {
		if (t - p < 3 || t[-1] != ']' || memchr(p + 1, ']', (size_t)(t - p - 2)))
			return 0;
		put_str(&cols->module, row, p + 1, t - 1);
		if (t == end)
			return 0;
		p = skip_blanks(t, end);
		t = token_end(p, end);
	} else {
		put_str(&cols->module, row, p, p);
	}

	/* func:FUNCTION */
	if (t - p < 6 || memcmp(p, "func:", 5) != 0)
		return 0;
	put_str(&cols->function, row, p + 5, t);

	/* KEY:VALUE extras */
	for (p = skip_blanks(t, end); p < end; p = skip_blanks(t, end)) {
		t = token_end(p, end);
		colon = memchr(p, ':', (size_t)(t - p));
		if (!colon || colon == p)
			return 0;
		if (!extras_start)
			extras_start = p;
		extras_end = t;
		if (colon - p == 8 && memcmp(p, "accurate", 8) == 0)
			accurate = !(t - colon == 3 && memcmp(colon + 1, "no", 2) == 0);
	}
	if (extras_start)
		put_str(&cols->extras, row, extras_start, extras_end);
	else
		put_str(&cols->extras, row, p, p);
	((uint8_t *)cols->accurate.p)[row] = (uint8_t)accurate;
	return 1;
}

static int outbuf_new(struct outbuf *b, Py_ssize_t size)
{
	b->obj = PyBytes_FromStringAndSize(NULL, size ? size : 1);
	b->p = b->obj ? PyBytes_AS_STRING(b->obj) : NULL;
	return b->obj != NULL;
}

static int strcol_new(struct strcol *c, Py_ssize_t rows, Py_ssize_t data)
{
	c->used = 0;
	if (!outbuf_new(&c->off, (rows + 1) * (Py_ssize_t)sizeof(int32_t)) ||
	    !outbuf_new(&c->data, data))
		return 0;
	((int32_t *)c->off.p)[0] = 0;
	return 1;
}

#define NCOLS 12

static void column_list(struct columns *c, struct outbuf **out)
{
	struct outbuf *all[NCOLS] = {
		&c->nbytes,	  &c->calls,	     &c->line,		 &c->accurate,
		&c->file.off,	  &c->file.data,     &c->module.off,	 &c->module.data,
		&c->function.off, &c->function.data, &c->extras.off,	 &c->extras.data,
	};
	memcpy(out, all, sizeof(all));
}

static void columns_free(struct columns *c)
{
	struct outbuf *all[NCOLS];
	int i;

	column_list(c, all);
	for (i = 0; i < NCOLS; i++)
		Py_CLEAR(all[i]->obj);
}

/* Shrink every column to `rows` rows and hand them over as the result tuple. */
static PyObject *columns_result(struct columns *c, Py_ssize_t rows)
{
	struct strcol *s[] = { &c->file, &c->module, &c->function, &c->extras };
	Py_ssize_t size[NCOLS];
	struct outbuf *all[NCOLS];
	PyObject *tuple;
	int i;

	size[0] = size[1] = rows * (Py_ssize_t)sizeof(int64_t);
	size[2] = rows * (Py_ssize_t)sizeof(int32_t);
	size[3] = rows;
	for (i = 0; i < 4; i++) {
		size[4 + 2 * i] = (rows + 1) * (Py_ssize_t)sizeof(int32_t);
		size[5 + 2 * i] = s[i]->used;
	}
	column_list(c, all);
	tuple = PyTuple_New(NCOLS + 1);
	if (!tuple)
		return NULL;
	PyTuple_SET_ITEM(tuple, 0, PyLong_FromSsize_t(rows));
	if (!PyTuple_GET_ITEM(tuple, 0))
		goto fail;
	for (i = 0; i < NCOLS; i++) {
		if (_PyBytes_Resize(&all[i]->obj, size[i]) < 0)
			goto fail;
		PyTuple_SET_ITEM(tuple, i + 1, all[i]->obj);
		all[i]->obj = NULL; /* the tuple owns it now */
	}
	return tuple;
fail:
	Py_DECREF(tuple);
	return NULL;
}

static PyObject *scan(PyObject *self, PyObject *args)
{
	Py_buffer view = { 0 };
	PyObject *obj;
	struct columns cols;
	const char *buf, *p, *end, *nl;
	Py_ssize_t start = 0, len, max_rows, row = 0;
	PyObject *result = NULL;
	int ok = 1;

	(void)self;
	if (!PyArg_ParseTuple(args, "O|n", &obj, &start))
		return NULL;
	memset(&cols, 0, sizeof(cols));
	if (PyUnicode_Check(obj)) {
		/* A str read from a file: ASCII text is stored one byte per character. */
		if (PyUnicode_READY(obj) < 0)
			return NULL;
		if (!PyUnicode_IS_ASCII(obj))
			Py_RETURN_NONE;
		buf = (const char *)PyUnicode_DATA(obj);
		len = PyUnicode_GET_LENGTH(obj);
	} else {
		if (PyObject_GetBuffer(obj, &view, PyBUF_SIMPLE) < 0)
			return NULL;
		buf = view.buf;
		len = view.len;
	}
	if (start < 0 || start > len) {
		PyErr_SetString(PyExc_ValueError, "start out of range");
		goto out;
	}
	buf += start;
	len -= start;
	end = buf + len;
	/* int32 offsets: bodies over 2 GiB go the Python way */
	if (len == 0 || len > INT32_MAX) {
		result = Py_None;
		Py_INCREF(result);
		goto out;
	}

	/* The shortest record, "0 0 a:0 func:f\n", has 15 bytes: more lines than len/15+1
	 * means short, hence bad, lines, and the scan stops there. */
	max_rows = len / 15 + 1;

	if (!outbuf_new(&cols.nbytes, max_rows * (Py_ssize_t)sizeof(int64_t)) ||
	    !outbuf_new(&cols.calls, max_rows * (Py_ssize_t)sizeof(int64_t)) ||
	    !outbuf_new(&cols.line, max_rows * (Py_ssize_t)sizeof(int32_t)) ||
	    !outbuf_new(&cols.accurate, max_rows) || !strcol_new(&cols.file, max_rows, len) ||
	    !strcol_new(&cols.module, max_rows, len) ||
	    !strcol_new(&cols.function, max_rows, len) || !strcol_new(&cols.extras, max_rows, len))
		goto out;

	Py_BEGIN_ALLOW_THREADS
	for (p = buf; p < end && ok; p = nl + 1, row++) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if (!nl)
			nl = end;
		ok = row < max_rows && scan_line(p, nl, row, &cols);
	}
	Py_END_ALLOW_THREADS

	if (!ok) {
		result = Py_None;
		Py_INCREF(result);
		goto out;
	}
	result = columns_result(&cols, row);
out:
	columns_free(&cols);
	if (view.obj)
		PyBuffer_Release(&view);
	return result;
}

/*
 * strings(offsets: bytes, data: bytes) -> list[str]: one str per (offsets[i], offsets[i+1])
 * slice of ASCII data. Building a column's Python strings in one call costs ~30 ns each,
 * against ~150 ns for slicing and decoding in a Python loop.
 */
static PyObject *strings(PyObject *self, PyObject *args)
{
	Py_buffer off, data;
	PyObject *list = NULL;
	const int32_t *o;
	Py_ssize_t n, i;

	(void)self;
	if (!PyArg_ParseTuple(args, "y*y*", &off, &data))
		return NULL;
	n = off.len / (Py_ssize_t)sizeof(int32_t) - 1;
	o = off.buf;
	if (n < 0 || off.len % (Py_ssize_t)sizeof(int32_t)) {
		PyErr_SetString(PyExc_ValueError, "offsets: want n+1 native int32");
		goto out;
	}
	for (i = 0; i < n; i++) {
		if (o[i] < 0 || o[i] > o[i + 1] || o[i + 1] > data.len) {
			PyErr_SetString(PyExc_ValueError, "offsets out of range");
			goto out;
		}
	}
	list = PyList_New(n);
	if (!list)
		goto out;
	for (i = 0; i < n; i++) {
		PyObject *s = PyUnicode_DecodeASCII((const char *)data.buf + o[i],
						    o[i + 1] - o[i], "strict");
		if (!s) {
			Py_CLEAR(list);
			goto out;
		}
		PyList_SET_ITEM(list, i, s);
	}
out:
	PyBuffer_Release(&off);
	PyBuffer_Release(&data);
	return list;
}

static PyMethodDef methods[] = {
	{ "scan", scan, METH_VARARGS,
	  "scan(text, start=0) -> None | tuple: validate and split an allocinfo body "
	  "(text[start:], str or bytes) into columns" },
	{ "strings", strings, METH_VARARGS,
	  "strings(offsets, data) -> list[str]: a string column as Python strings" },
	{ NULL, NULL, 0, NULL },
};

static struct PyModuleDef module = {
	.m_base = PyModuleDef_HEAD_INIT,
	.m_name = "_allocinfo_scan",
	.m_doc = "Compiled fast path of the allocinfo text parser (see allocinfo.py).",
	.m_size = -1,
	.m_methods = methods,
};

PyMODINIT_FUNC PyInit__allocinfo_scan(void)
{
	init_byte_class();
	return PyModule_Create(&module);
}
