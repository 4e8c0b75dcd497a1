// st.hpp: C++17 RAII wrappers over st.h (header-only). Each handle frees itself; a failed call throws
// st::Error with the status and st_last_error()'s message. docs/EMBEDDING.md has the rules they follow.
#ifndef ST_HPP
#define ST_HPP

#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "st.h"

namespace st {

class Error : public std::runtime_error {
public:
    Error(StStatus status, const std::string &what) : std::runtime_error(what), status_(status) {}
    StStatus status() const { return status_; }

private:
    StStatus status_;
};

inline void check(StStatus s) {
    if (s != ST_STATUS_OK) throw Error(s, std::string(st_status_name(s)) + ": " + st_last_error());
}

struct EngineFree { void operator()(StEngine *p) const { st_engine_free(p); } };
struct FrameFree { void operator()(StFrame *p) const { st_frame_free(p); } };
struct AnswerFree { void operator()(StAnswer *p) const { st_answer_free(p); } };

struct Object {
    std::string id, label;
    double bbox[4];
};

struct Relationship {
    std::string subject, predicate, object;
};

class Answer {
public:
    explicit Answer(StAnswer *a) : a_(a) { check(st_answer_info(a, &info_)); }
    const StAnswerInfo &info() const { return info_; }
    bool valid() const { return info_.valid; }
    char letter() const { return info_.letter; }
    // A part's text; empty when the response has no such section.
    std::string text(StAnswerPart part) const {
        const char *t = st_answer_text(a_.get(), part);
        return t ? t : "";
    }
    std::vector<Object> objects() const {
        std::vector<Object> out;
        for (size_t i = 0; i < info_.object_count; i++) {
            StObject o;
            check(st_answer_object(a_.get(), i, &o));
            out.push_back({o.id, o.label, {o.bbox[0], o.bbox[1], o.bbox[2], o.bbox[3]}});
        }
        return out;
    }
    std::vector<Relationship> relationships() const {
        std::vector<Relationship> out;
        for (size_t i = 0; i < info_.relationship_count; i++) {
            StRelationship r;
            check(st_answer_relationship(a_.get(), i, &r));
            out.push_back({r.subject, r.predicate, r.object});
        }
        return out;
    }

private:
    std::unique_ptr<StAnswer, AnswerFree> a_;
    StAnswerInfo info_{};
};

class Frame {
public:
    explicit Frame(StFrame *f) : f_(f) {}
    const StFrame *get() const { return f_.get(); }
    StFrameInfo info() const {
        StFrameInfo i;
        check(st_frame_info(f_.get(), &i));
        return i;
    }

private:
    std::unique_ptr<StFrame, FrameFree> f_;
};

class Engine {
public:
    explicit Engine(const std::string &model, const StEngineOptions &options = st_engine_options_default()) {
        StEngine *e = nullptr;
        check(st_engine_open(model.c_str(), &options, &e));
        e_.reset(e);
    }
    // Another engine over the same loaded weights, for another thread.
    Engine clone() const {
        StEngine *e = nullptr;
        check(st_engine_clone(e_.get(), &e));
        return Engine(e);
    }
    Frame encode_file(const std::string &path) {
        StFrame *f = nullptr;
        check(st_frame_from_file(e_.get(), path.c_str(), &f));
        return Frame(f);
    }
    Frame encode_pixels(const uint8_t *data, uint32_t width, uint32_t height, size_t stride, StPixelFormat format) {
        StFrame *f = nullptr;
        check(st_frame_from_pixels(e_.get(), data, width, height, stride, format, &f));
        return Frame(f);
    }
    Answer ask(const Frame &frame, const std::string &question,
               const StGenerateOptions &options = st_generate_options_default()) {
        StAnswer *a = nullptr;
        check(st_ask(e_.get(), frame.get(), question.c_str(), &options, &a));
        return Answer(a);
    }

private:
    explicit Engine(StEngine *e) : e_(e) {}
    std::unique_ptr<StEngine, EngineFree> e_;
};

}  // namespace st

#endif  // ST_HPP
