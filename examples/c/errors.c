/* st's C error paths, run under valgrind by capi/tests/c_examples.rs: every bad call returns a status and a
 * message, touches nothing it should not, and leaks nothing.
 *
 *   ./errors MODEL_DIR CORRUPT_IMAGE
 */
#include <stdio.h>
#include <string.h>

#include "st.h"

static int failures = 0;

/* The call returned `want` and the last error mentions `needle`. */
static void expect(const char *what, StStatus got, StStatus want, const char *needle) {
    const char *msg = st_last_error();
    int ok = got == want && (needle == NULL || strstr(msg, needle) != NULL);
    printf("%s %s: %s: %s\n", ok ? "ok  " : "FAIL", what, st_status_name(got), msg);
    failures += !ok;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s MODEL_DIR CORRUPT_IMAGE\n", argv[0]);
        return 2;
    }
    StEngine *engine = NULL;
    expect("missing model", st_engine_open("/nonexistent/model", NULL, &engine), ST_STATUS_MODEL, "/nonexistent/model");
    expect("NULL model path", st_engine_open(NULL, NULL, &engine), ST_STATUS_INVALID_ARGUMENT, "model is NULL");
    expect("invalid UTF-8 path", st_engine_open("bad\xff", NULL, &engine), ST_STATUS_INVALID_ARGUMENT, "UTF-8");
    StEngineOptions options = st_engine_options_default();
    options.device = "gpu7";
    expect("unknown device", st_engine_open(argv[1], &options, &engine), ST_STATUS_INVALID_ARGUMENT, "gpu7");

    options = st_engine_options_default();
    options.threads = 1;
    StStatus s = st_engine_open(argv[1], &options, &engine);
    expect("open", s, ST_STATUS_OK, NULL);
    if (s != ST_STATUS_OK) return 1;

    StFrame *frame = NULL;
    expect("corrupt image", st_frame_from_file(engine, argv[2], &frame), ST_STATUS_IMAGE, argv[2]);
    expect("missing image", st_frame_from_file(engine, "/nonexistent.png", &frame), ST_STATUS_IO, "/nonexistent.png");
    const unsigned char junk[] = "not an image";
    expect("corrupt bytes", st_frame_from_bytes(engine, junk, sizeof junk, "camera", &frame), ST_STATUS_IMAGE, "camera");
    unsigned char pixels[4 * 3] = {0};
    expect("short stride", st_frame_from_pixels(engine, pixels, 4, 1, 2, ST_PIXEL_FORMAT_RGB8, &frame),
           ST_STATUS_INVALID_ARGUMENT, "stride");
    expect("bad pixel format", st_frame_from_pixels(engine, pixels, 4, 1, 12, 9, &frame), ST_STATUS_INVALID_ARGUMENT,
           "StPixelFormat");
    expect("NULL out", st_frame_from_file(engine, argv[2], NULL), ST_STATUS_INVALID_ARGUMENT, "out is NULL");

    /* Handles: NULL, of another kind, freed — refused before being dereferenced. */
    expect("NULL engine", st_frame_from_file(NULL, argv[2], &frame), ST_STATUS_INVALID_ARGUMENT, "engine is NULL");
    expect("engine as a frame", st_frame_info((const StFrame *)engine, NULL), ST_STATUS_INVALID_HANDLE, "frame");
    int on_stack = 0;
    expect("foreign pointer", st_engine_clone((const StEngine *)&on_stack, NULL), ST_STATUS_INVALID_HANDLE, "engine");
    StEngine *clone = NULL;
    expect("clone", st_engine_clone(engine, &clone), ST_STATUS_OK, NULL);
    expect("free clone", st_engine_free(clone), ST_STATUS_OK, NULL);
    expect("double free", st_engine_free(clone), ST_STATUS_INVALID_HANDLE, "freed");
    expect("free NULL", st_answer_free(NULL), ST_STATUS_OK, NULL);

    /* Asking: bad question and options come back as errors; the engine keeps working. */
    unsigned char strip[400 * 3];
    memset(strip, 128, sizeof strip);
    /* One row of 400 pixels: an aspect ratio of 400, above the preprocessor's limit. */
    expect("extreme aspect ratio", st_frame_from_pixels(engine, strip, 400, 1, 400 * 3, ST_PIXEL_FORMAT_RGB8, &frame),
           ST_STATUS_IMAGE, "aspect ratio");
    static unsigned char square[56 * 56 * 4];
    memset(square, 200, sizeof square);
    s = st_frame_from_pixels(engine, square, 56, 56, 56 * 4, ST_PIXEL_FORMAT_BGRA8, &frame);
    expect("frame from pixels", s, ST_STATUS_OK, NULL);
    StAnswer *answer = NULL;
    expect("NULL question", st_ask(engine, frame, NULL, NULL, &answer), ST_STATUS_INVALID_ARGUMENT, "question");
    expect("blank question", st_ask(engine, frame, "   ", NULL, &answer), ST_STATUS_INVALID_ARGUMENT, "question");
    StGenerateOptions gen = st_generate_options_default();
    gen.top_p = 2.0f;
    expect("top_p 2", st_ask(engine, frame, "Where? (A) here (B) there", &gen, &answer), ST_STATUS_INVALID_ARGUMENT,
           "top_p");
    gen = st_generate_options_default();
    gen.max_new_tokens = 1000000;
    expect("budget over the context", st_ask(engine, frame, "Where? (A) here (B) there", &gen, &answer),
           ST_STATUS_INVALID_ARGUMENT, "context");
    gen.max_new_tokens = 3;
    gen.grammar = false;
    expect("ask after errors", st_ask(engine, frame, "Where? (A) here (B) there", &gen, &answer), ST_STATUS_OK, NULL);
    expect("bad part", st_answer_text(answer, 99) == NULL ? ST_STATUS_INVALID_ARGUMENT : ST_STATUS_OK,
           ST_STATUS_INVALID_ARGUMENT, "StAnswerPart");
    StObject object;
    expect("object past the end", st_answer_object(answer, 1000, &object), ST_STATUS_INVALID_ARGUMENT, "past the last");

    /* A panic inside st comes back as a status, never as an unwind into C. */
    expect("panic", st_internal_panic_for_tests(), ST_STATUS_INTERNAL, "panic");

    st_answer_free(answer);
    st_frame_free(frame);
    st_engine_free(engine);
    size_t live = st_live_handles();
    printf("%s live handles: %zu\n", live == 0 ? "ok  " : "FAIL", live);
    failures += live != 0;
    printf("%d failures\n", failures);
    return failures != 0;
}
