/* Ask st about an image from C: open a model, encode a frame once, ask two questions (one streamed),
 * read the answer's parts without JSON, free everything.
 *
 *   cc examples/c/ask.c -Iinclude -Ltarget/release -lst -Wl,-rpath,$PWD/target/release -o ask
 *   ./ask MODEL_DIR IMAGE "QUESTION"
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "st.h"

static int fail(const char *what, StStatus status) {
    fprintf(stderr, "%s: %s: %s\n", what, st_status_name(status), st_last_error());
    return 1;
}

/* Streaming: print each piece as it comes; returning non-zero would stop generation. */
static int32_t on_token(void *user_data, const char *text, uint32_t token_id) {
    (void)token_id;
    size_t *count = user_data;
    *count += 1;
    fputs(text, stderr);
    return 0;
}

static void print_answer(const StAnswer *answer) {
    StAnswerInfo info;
    if (st_answer_info(answer, &info) != ST_STATUS_OK) return;
    const char *observe = st_answer_text(answer, ST_ANSWER_PART_OBSERVE);
    const char *option = st_answer_text(answer, ST_ANSWER_PART_OPTION_TEXT);
    printf("valid: %s\n", info.valid ? "yes" : "no");
    printf("observe: %s\n", observe ? observe : "(missing)");
    printf("objects: %zu\n", info.object_count);
    for (size_t i = 0; i < info.object_count; i++) {
        StObject o;
        if (st_answer_object(answer, i, &o) == ST_STATUS_OK)
            printf("  %s (%s) [%.0f, %.0f, %.0f, %.0f]\n", o.id, o.label, o.bbox[0], o.bbox[1], o.bbox[2], o.bbox[3]);
    }
    printf("relationships: %zu\n", info.relationship_count);
    for (size_t i = 0; i < info.relationship_count; i++) {
        StRelationship r;
        if (st_answer_relationship(answer, i, &r) == ST_STATUS_OK)
            printf("  %s %s %s\n", r.subject, r.predicate, r.object);
    }
    printf("answer: (%c) %s\n", info.letter ? info.letter : '?', option ? option : "(missing)");
    printf("tokens: %zu new, %zu prompt (%zu reused), %.1f tok/s\n", info.new_tokens, info.prompt_tokens,
           info.reused_prompt_tokens, info.decode_tokens_per_s);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s MODEL_DIR IMAGE QUESTION\n", argv[0]);
        return 2;
    }
    printf("st %s\n", st_version());
    StEngineOptions options = st_engine_options_default();
    options.threads = 1;
    StEngine *engine = NULL;
    StStatus s = st_engine_open(argv[1], &options, &engine);
    if (s != ST_STATUS_OK) return fail("open", s);

    StFrame *frame = NULL;
    s = st_frame_from_file(engine, argv[2], &frame);
    if (s != ST_STATUS_OK) return fail("frame", s);
    StFrameInfo fi;
    st_frame_info(frame, &fi);
    printf("frame: %ux%u -> %ux%u, %llu image tokens\n", fi.width, fi.height, fi.resized_width, fi.resized_height,
           (unsigned long long)fi.image_tokens);

    StGenerateOptions gen = st_generate_options_default(); /* greedy, grammar on */
    gen.max_new_tokens = 400;
    StAnswer *answer = NULL;
    s = st_ask(engine, frame, argv[3], &gen, &answer);
    if (s != ST_STATUS_OK) return fail("ask", s);
    print_answer(answer);

    /* The same question again, streamed: the frame's prefix is reused, the tokens are the same. */
    size_t streamed = 0;
    StAnswer *again = NULL;
    s = st_ask_stream(engine, frame, argv[3], &gen, on_token, &streamed, &again);
    fputc('\n', stderr);
    if (s != ST_STATUS_OK) return fail("ask_stream", s);
    int same = strcmp(st_answer_text(answer, ST_ANSWER_PART_RAW), st_answer_text(again, ST_ANSWER_PART_RAW)) == 0;
    printf("streamed: %zu tokens, same text: %s\n", streamed, same ? "yes" : "no");
    printf("json: %s\n", st_answer_text(again, ST_ANSWER_PART_JSON));

    st_answer_free(again);
    st_answer_free(answer);
    st_frame_free(frame);
    st_engine_free(engine);
    printf("live handles: %zu\n", st_live_handles());
    return same ? 0 : 1;
}
