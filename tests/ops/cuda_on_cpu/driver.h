// The command line of an emulator build (tests/ops/test_kernels_on_cpu.py writes the translation
// unit: cuda_on_cpu.h, the kernel sources, this file, and a table of the kernels by name):
//
//   emulator NAME GX GY GZ BX BY BZ SHARED_BYTES N_BUFFERS {PATH BYTES OFFSET}... N_INTS {INT}...
//
// runs kernel NAME (e.g. "reassemble_tiled<float, 5>") on the grid, block and dynamic shared
// memory given. Each buffer is read from PATH (BYTES bytes) into its own allocation, starting
// OFFSET bytes past a 256-byte boundary (cudaMalloc's; OFFSET, below 16, is the alignment the
// tensor had on the GPU side of the test); the last buffer is the output and is written back to
// its PATH. Errors go to stderr with a non-zero exit status.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string>
#include <vector>

namespace cuda_on_cpu {

struct Entry {
    const char* name;
    void (*run)(const Launch&);
};

struct Buffer {
    std::string path;
    std::size_t bytes = 0, offset = 0;
    unsigned char* allocation = nullptr;
};

inline long argument(int argc, char** argv, int& next) {
    if (next >= argc) fail("too few command-line arguments");
    char* end = nullptr;
    const long value = std::strtol(argv[next], &end, 10);
    if (end == argv[next] || *end != '\0') fail("a command-line number is not an integer");
    ++next;
    return value;
}

inline void read_file(const Buffer& buffer) {
    std::FILE* file = std::fopen(buffer.path.c_str(), "rb");
    if (file == nullptr) fail("cannot open an input buffer");
    const std::size_t read = std::fread(buffer.allocation + buffer.offset, 1, buffer.bytes, file);
    std::fclose(file);
    if (read != buffer.bytes) fail("an input buffer is shorter than its size");
}

inline void write_file(const Buffer& buffer) {
    std::FILE* file = std::fopen(buffer.path.c_str(), "wb");
    if (file == nullptr) fail("cannot write the output buffer");
    const std::size_t written =
        std::fwrite(buffer.allocation + buffer.offset, 1, buffer.bytes, file);
    if (std::fclose(file) != 0 || written != buffer.bytes) fail("short write of the output");
}

inline int run_main(int argc, char** argv, const Entry* entries, std::size_t n_entries) {
    if (argc < 2) fail("usage: emulator NAME GX GY GZ BX BY BZ SHARED N {PATH BYTES OFFSET}... N {INT}...");
    const std::string name = argv[1];
    const Entry* entry = nullptr;
    for (std::size_t i = 0; i < n_entries; ++i) {
        if (name == entries[i].name) entry = &entries[i];
    }
    if (entry == nullptr) {
        std::fprintf(stderr, "cuda_on_cpu: no kernel named %s in this build\n", name.c_str());
        return 2;
    }
    int next = 2;
    Launch config;
    config.grid = {static_cast<unsigned int>(argument(argc, argv, next)),
                   static_cast<unsigned int>(argument(argc, argv, next)),
                   static_cast<unsigned int>(argument(argc, argv, next))};
    config.block = {static_cast<unsigned int>(argument(argc, argv, next)),
                    static_cast<unsigned int>(argument(argc, argv, next)),
                    static_cast<unsigned int>(argument(argc, argv, next))};
    config.shared_bytes = static_cast<std::size_t>(argument(argc, argv, next));
    std::vector<Buffer> buffers(static_cast<std::size_t>(argument(argc, argv, next)));
    if (buffers.empty()) fail("a launch needs at least its output buffer");
    for (Buffer& buffer : buffers) {
        if (next >= argc) fail("too few command-line arguments");
        buffer.path = argv[next++];
        buffer.bytes = static_cast<std::size_t>(argument(argc, argv, next));
        buffer.offset = static_cast<std::size_t>(argument(argc, argv, next));
        if (buffer.offset >= 16) fail("a buffer's offset is below 16 bytes");
        // Exactly offset + bytes: AddressSanitizer reports any access past the tensor's end.
        buffer.allocation = static_cast<unsigned char*>(
            ::operator new[](buffer.offset + buffer.bytes, std::align_val_t(256)));
        std::memset(buffer.allocation, 0xff, buffer.offset);
        read_file(buffer);
        config.buffers.push_back(buffer.allocation + buffer.offset);
    }
    const long n_ints = argument(argc, argv, next);
    for (long i = 0; i < n_ints; ++i) {
        config.ints.push_back(static_cast<int>(argument(argc, argv, next)));
    }
    if (next != argc) fail("unexpected extra command-line arguments");
    entry->run(config);
    write_file(buffers.back());
    for (Buffer& buffer : buffers) ::operator delete[](buffer.allocation, std::align_val_t(256));
    return 0;
}

}  // namespace cuda_on_cpu
