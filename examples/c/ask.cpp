// Ask st about an image from C++ through include/st.hpp's RAII wrappers (handles free themselves,
// errors throw st::Error).
//
//   c++ -std=c++17 examples/c/ask.cpp -Iinclude -Ltarget/release -lst -Wl,-rpath,$PWD/target/release -o ask_cpp
//   ./ask_cpp MODEL_DIR IMAGE "QUESTION"
#include <cstdio>

#include "st.hpp"

int main(int argc, char **argv) {
    if (argc != 4) {
        std::fprintf(stderr, "usage: %s MODEL_DIR IMAGE QUESTION\n", argv[0]);
        return 2;
    }
    try {
        StEngineOptions options = st_engine_options_default();
        options.threads = 1;
        st::Engine engine(argv[1], options);
        st::Frame frame = engine.encode_file(argv[2]);
        StGenerateOptions gen = st_generate_options_default();
        gen.max_new_tokens = 400;
        st::Answer answer = engine.ask(frame, argv[3], gen);
        std::printf("valid: %s\n", answer.valid() ? "yes" : "no");
        for (const st::Object &o : answer.objects())
            std::printf("  %s (%s) [%.0f, %.0f, %.0f, %.0f]\n", o.id.c_str(), o.label.c_str(), o.bbox[0], o.bbox[1],
                        o.bbox[2], o.bbox[3]);
        std::printf("answer: (%c) %s\n", answer.letter() ? answer.letter() : '?',
                    answer.text(ST_ANSWER_PART_OPTION_TEXT).c_str());
        try {
            engine.encode_file("/nonexistent.png");
        } catch (const st::Error &e) {
            std::printf("error as expected: %s\n", e.what());
        }
    } catch (const st::Error &e) {
        std::fprintf(stderr, "%s\n", e.what());
        return 1;
    }
    std::printf("live handles: %zu\n", st_live_handles());
    return st_live_handles() == 0 ? 0 : 1;
}
