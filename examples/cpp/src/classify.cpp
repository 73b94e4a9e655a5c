// Classifies PNG images with a vggdeploy .onnx through ONNX Runtime's C++ API. Labels, preprocessing and the
// input/output names all come from the model's metadata (GetModelMetadata); nothing is hard-coded.
//   classify MODEL.onnx IMAGE.png... [--top-k K] [--max-pixels N] [--json]
#include <onnxruntime_cxx_api.h>
#include <png.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <csetjmp>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <nlohmann/json.hpp>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

using json = nlohmann::json;

namespace {

struct Preprocessing {
  int height = 0;
  int width = 0;
  int channels = 1;  // 1: "grayscale" (luma), 3: "rgb"
  std::vector<float> mean, std;  // one per channel
  std::array<float, 3> luma{};

  static Preprocessing FromMetadata(const json& p) {
    const json& resize = p.at("resize");
    const bool known_color = p.at("color") == "grayscale" || p.at("color") == "rgb";
    if (!known_color || resize.at("method") != "bilinear" ||
        resize.at("coordinate_transformation") != "half_pixel" || resize.at("antialias").get<bool>() ||
        p.at("alpha") != "composite_over_black") {
      throw std::runtime_error("unsupported preprocessing: " + p.dump());
    }
    Preprocessing spec;
    spec.height = resize.at("height");
    spec.width = resize.at("width");
    spec.channels = p.at("color") == "rgb" ? 3 : 1;
    spec.mean = p.at("mean").get<std::vector<float>>();
    spec.std = p.at("std").get<std::vector<float>>();
    if (static_cast<int>(spec.mean.size()) != spec.channels || static_cast<int>(spec.std.size()) != spec.channels) {
      throw std::runtime_error("the preprocessing metadata needs one mean and std per channel");
    }
    const auto finite = [](float v) { return std::isfinite(v); };
    if (!std::all_of(spec.mean.begin(), spec.mean.end(), finite) || !std::all_of(spec.std.begin(), spec.std.end(), finite) ||
        *std::min_element(spec.std.begin(), spec.std.end()) <= 0) {
      throw std::runtime_error("the preprocessing's mean " + p.at("mean").dump() + " and std " + p.at("std").dump() +
                               " must be finite numbers, every std above 0");
    }
    if (spec.channels == 1) {
      for (int i = 0; i < 3; ++i) spec.luma[i] = p.at("luma_weights").at(i);
    }
    return spec;
  }
};

struct Image {
  int width = 0;
  int height = 0;
  std::vector<float> planes;  // channels x height x width, [0, 1]
};

// The EXIF orientation (tag 0x0112) of a PNG's eXIf chunk: a TIFF header ("II*\0" or "MM\0*", an "Exif\0\0"
// prefix allowed), then IFD0's entries. 1 (as stored) when there is none or it cannot be read, as Pillow treats it.
int ExifOrientation(const png_byte* data, size_t size) {
  if (size >= 6 && std::equal(data, data + 6, "Exif\0\0")) {
    data += 6;
    size -= 6;
  }
  if (size < 8) return 1;
  const bool little = data[0] == 'I' && data[1] == 'I';
  if (!little && !(data[0] == 'M' && data[1] == 'M')) return 1;
  auto read = [&](size_t at, int bytes) -> uint32_t {
    uint32_t value = 0;
    for (int i = 0; i < bytes; ++i) value |= static_cast<uint32_t>(data[at + i]) << (8 * (little ? i : bytes - 1 - i));
    return value;
  };
  const size_t ifd = read(4, 4);
  if (ifd + 2 > size) return 1;
  const uint32_t entries = read(ifd, 2);
  for (uint32_t e = 0; e < entries && ifd + 2 + 12 * (e + 1) <= size; ++e) {
    const size_t entry = ifd + 2 + 12 * e;
    if (read(entry, 2) == 0x0112 && read(entry + 2, 2) == 3) {  // orientation, a SHORT
      const uint32_t value = read(entry + 8, 2);
      return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
    }
  }
  return 1;
}

// The upright image, as Pillow's ImageOps.exif_transpose makes it: 2 mirror, 3 turn 180 degrees, 4 flip, 5 transpose,
// 6 turn 90 degrees clockwise, 7 transverse, 8 turn 90 degrees anticlockwise.
Image Upright(const Image& stored, int orientation) {
  if (orientation == 1) return stored;
  const int w = stored.width, h = stored.height;
  const bool swaps = orientation >= 5;
  Image upright{swaps ? h : w, swaps ? w : h, std::vector<float>(stored.planes.size())};
  const size_t area = static_cast<size_t>(w) * h;
  const int channels = static_cast<int>(stored.planes.size() / std::max<size_t>(area, 1));
  for (int y = 0; y < upright.height; ++y) {
    for (int x = 0; x < upright.width; ++x) {
      int sx = x, sy = y;  // the stored pixel that lands at (x, y)
      switch (orientation) {
        case 2: sx = w - 1 - x; break;
        case 3: sx = w - 1 - x; sy = h - 1 - y; break;
        case 4: sy = h - 1 - y; break;
        case 5: sx = y; sy = x; break;
        case 6: sx = y; sy = h - 1 - x; break;
        case 7: sx = w - 1 - y; sy = h - 1 - x; break;
        case 8: sx = w - 1 - y; sy = x; break;
      }
      for (int c = 0; c < channels; ++c) {
        upright.planes[c * area + static_cast<size_t>(y) * upright.width + x] =
            stored.planes[c * area + static_cast<size_t>(sy) * w + sx];
      }
    }
  }
  return upright;
}

// Decodes any PNG to the model's channels in [0, 1] exactly as vggdeploy/preprocess.py (Pillow) reads it:
//  - 16-bit gray: value / 65535, full precision (repeated to 3 channels for an RGB model);
//  - gray of 1-8 bits: value / 255 after expansion to 8 bits (a tRNS colour key is ignored, as Pillow's "L" does);
//  - everything else (gray+alpha, RGB, RGBA, palette, tRNS keys): 16-bit samples keep their high byte, as Pillow's
//    8-bit modes do, then luma in float (grayscale models) or R, G, B (RGB models), alpha composited over black,
//    / 255.
// The image is then turned upright by the orientation of its eXIf chunk, before or after the pixels.
// libpng's simplified API is not used: it treats 16-bit data as linear light and re-encodes it to sRGB.
Image LoadPng(const std::string& path, const Preprocessing& spec, long long max_pixels) {
  std::error_code unknown;
  const std::filesystem::file_status status = std::filesystem::status(path, unknown);
  if (!std::filesystem::exists(status)) throw std::runtime_error("no such file");
  if (std::filesystem::is_directory(status)) {
    throw std::runtime_error("is a folder, not a PNG file (this program takes image files one by one)");
  }
  std::FILE* file = std::fopen(path.c_str(), "rb");
  if (!file) throw std::runtime_error(std::string("cannot open the file (") + std::strerror(errno) + ")");
  std::array<png_byte, 8> signature{};
  if (std::fread(signature.data(), 1, signature.size(), file) != signature.size() ||
      png_sig_cmp(signature.data(), 0, signature.size()) != 0) {
    std::fclose(file);
    throw std::runtime_error("not a PNG file (this example decodes PNG only)");
  }
  // libpng's warnings (a malformed ancillary chunk, say) are not errors: the image is read as Pillow reads it
  png_structp png = png_create_read_struct(PNG_LIBPNG_VER_STRING, nullptr, nullptr,
                                           [](png_structp, png_const_charp) {});
  png_infop info = png ? png_create_info_struct(png) : nullptr;
  if (!png || !info) {
    png_destroy_read_struct(&png, &info, nullptr);
    std::fclose(file);
    throw std::runtime_error("libpng could not start");
  }
  Image image;
  std::vector<png_byte> pixels;
  std::vector<png_bytep> rows;  // declared before setjmp: nothing with a destructor is created after it
  if (setjmp(png_jmpbuf(png))) {  // libpng reports a corrupt or truncated file by jumping back here
    png_destroy_read_struct(&png, &info, nullptr);
    std::fclose(file);
    throw std::runtime_error("truncated or corrupt PNG");
  }
  png_init_io(png, file);
  png_set_sig_bytes(png, static_cast<int>(signature.size()));
  png_read_info(png, info);
  const int color = png_get_color_type(png, info);
  const int depth = png_get_bit_depth(png, info);
  const bool gray = color == PNG_COLOR_TYPE_GRAY;
  if (color == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
  if (gray && depth < 8) png_set_expand_gray_1_2_4_to_8(png);
  if (!gray && png_get_valid(png, info, PNG_INFO_tRNS)) png_set_tRNS_to_alpha(png);
  if (!gray && depth == 16) png_set_strip_16(png);  // keeps the high byte, as Pillow does
  if (color == PNG_COLOR_TYPE_GRAY_ALPHA) png_set_gray_to_rgb(png);
  if (!gray) png_set_add_alpha(png, 0xFF, PNG_FILLER_AFTER);  // every non-gray pixel becomes RGBA
  png_read_update_info(png, info);
  image.width = static_cast<int>(png_get_image_width(png, info));
  image.height = static_cast<int>(png_get_image_height(png, info));
  if (static_cast<long long>(image.width) * image.height > max_pixels) {
    png_destroy_read_struct(&png, &info, nullptr);
    std::fclose(file);
    throw std::runtime_error(std::to_string(image.width) + "x" + std::to_string(image.height) +
                             " pixels is over the limit of " + std::to_string(max_pixels) +
                             " (possible decompression bomb; raise --max-pixels to allow it)");
  }
  const size_t row_bytes = png_get_rowbytes(png, info);
  pixels.resize(row_bytes * image.height);
  rows.resize(image.height);
  for (int y = 0; y < image.height; ++y) rows[y] = pixels.data() + y * row_bytes;
  png_read_image(png, rows.data());
  if (setjmp(png_jmpbuf(png)) == 0) png_read_end(png, info);  // an eXIf chunk may follow the pixels; a damaged
                                                                // tail after them is ignored, as Pillow ignores it
  png_uint_32 exif_size = 0;
  png_bytep exif = nullptr;
  const int orientation = png_get_eXIf_1(png, info, &exif_size, &exif) ? ExifOrientation(exif, exif_size) : 1;
  png_destroy_read_struct(&png, &info, nullptr);
  std::fclose(file);

  const size_t area = static_cast<size_t>(image.width) * image.height;
  image.planes.resize(area * spec.channels);
  for (size_t i = 0; i < area; ++i) {
    if (gray) {
      const float value = depth == 16 ? static_cast<float>((pixels[2 * i] << 8) | pixels[2 * i + 1]) / 65535.0f
                                      : pixels[i] / 255.0f;
      for (int c = 0; c < spec.channels; ++c) image.planes[c * area + i] = value;
    } else if (spec.channels == 1) {
      const png_byte* p = &pixels[4 * i];
      const float luma = spec.luma[0] * p[0] + spec.luma[1] * p[1] + spec.luma[2] * p[2];
      image.planes[i] = luma * (p[3] / 255.0f) / 255.0f;
    } else {
      const png_byte* p = &pixels[4 * i];
      for (int c = 0; c < 3; ++c) image.planes[c * area + i] = p[c] * (p[3] / 255.0f) / 255.0f;
    }
  }
  return Upright(image, orientation);
}

struct Taps {
  std::vector<int> lower, upper;
  std::vector<float> fraction;
};

// Bilinear taps on half-pixel centres: source = (o + 0.5) * in / out - 0.5, clamped to [0, in - 1].
Taps BilinearTaps(int in_size, int out_size) {
  Taps taps{std::vector<int>(out_size), std::vector<int>(out_size), std::vector<float>(out_size)};
  for (int o = 0; o < out_size; ++o) {
    const double source = std::max((o + 0.5) * (static_cast<double>(in_size) / out_size) - 0.5, 0.0);
    taps.lower[o] = std::min(static_cast<int>(std::floor(source)), in_size - 1);
    taps.upper[o] = std::min(taps.lower[o] + 1, in_size - 1);
    taps.fraction[o] = static_cast<float>(std::clamp(source - taps.lower[o], 0.0, 1.0));
  }
  return taps;
}

std::vector<float> ToModelInput(const Image& image, const Preprocessing& spec) {
  const Taps rows = BilinearTaps(image.height, spec.height);
  const Taps cols = BilinearTaps(image.width, spec.width);
  const size_t in_area = static_cast<size_t>(image.width) * image.height;
  const size_t out_area = static_cast<size_t>(spec.height) * spec.width;
  std::vector<float> input(out_area * spec.channels);
  for (int c = 0; c < spec.channels; ++c) {
    const float* plane = &image.planes[c * in_area];
    for (int y = 0; y < spec.height; ++y) {
      const float* top = &plane[static_cast<size_t>(rows.lower[y]) * image.width];
      const float* bottom = &plane[static_cast<size_t>(rows.upper[y]) * image.width];
      const float fy = rows.fraction[y];
      for (int x = 0; x < spec.width; ++x) {
        const float fx = cols.fraction[x];
        const float upper = top[cols.lower[x]] * (1 - fx) + top[cols.upper[x]] * fx;
        const float lower = bottom[cols.lower[x]] * (1 - fx) + bottom[cols.upper[x]] * fx;
        input[c * out_area + static_cast<size_t>(y) * spec.width + x] =
            (upper * (1 - fy) + lower * fy - spec.mean[c]) / spec.std[c];
      }
    }
  }
  return input;
}

json ReadMetadata(const Ort::Session& session) {
  Ort::AllocatorWithDefaultOptions allocator;
  const Ort::ModelMetadata metadata = session.GetModelMetadata();
  json decoded;
  for (const char* key : {"vggdeploy.format", "labels", "preprocessing", "io", "model"}) {
    Ort::AllocatedStringPtr value = metadata.LookupCustomMetadataMapAllocated(key, allocator);
    if (!value) throw std::runtime_error(std::string("the model has no '") + key + "' metadata (not a vggdeploy export?)");
    decoded[key] = json::parse(value.get());
  }
  // Optional: a model exported before the key existed means temperature 1 (plain softmax), uncalibrated.
  Ort::AllocatedStringPtr calibration = metadata.LookupCustomMetadataMapAllocated("calibration", allocator);
  decoded["calibration"] = calibration ? json::parse(calibration.get()) : json::object();
  // Optional: a model without the key has no familiarity output.
  Ort::AllocatedStringPtr familiarity = metadata.LookupCustomMetadataMapAllocated("familiarity", allocator);
  decoded["familiarity"] = familiarity ? json::parse(familiarity.get()) : json(nullptr);
  if (decoded.at("vggdeploy.format") != "1") {  // another contract: its keys may mean other things
    throw std::runtime_error("vggdeploy format " + decoded.at("vggdeploy.format").dump() +
                             ", but this program reads format \"1\" only");
  }
  const json temperature = decoded.at("calibration").value("temperature", json(1.0));
  if (!temperature.is_number() || !std::isfinite(temperature.get<double>()) || temperature.get<double>() <= 0) {
    throw std::runtime_error("calibration.temperature must be a positive number, got " + temperature.dump());
  }
  const json& scored = decoded.at("familiarity");
  if (!scored.is_null() && !(scored.is_object() && scored.contains("threshold") && scored.at("threshold").is_number() &&
                             std::isfinite(scored.at("threshold").get<double>()))) {
    throw std::runtime_error("familiarity.threshold must be a number, got " +
                             (scored.is_object() && scored.contains("threshold") ? scored.at("threshold").dump() : "none"));
  }
  return decoded;
}

// The shape ONNX Runtime reports for the graph input or output called `name` (-1 for a dynamic axis).
std::vector<int64_t> GraphShape(const Ort::Session& session, const std::string& name, bool input) {
  Ort::AllocatorWithDefaultOptions allocator;
  const size_t count = input ? session.GetInputCount() : session.GetOutputCount();
  for (size_t i = 0; i < count; ++i) {
    const auto found = input ? session.GetInputNameAllocated(i, allocator) : session.GetOutputNameAllocated(i, allocator);
    if (name == found.get()) {
      const Ort::TypeInfo info = input ? session.GetInputTypeInfo(i) : session.GetOutputTypeInfo(i);
      return info.GetTensorTypeAndShapeInfo().GetShape();
    }
  }
  throw std::runtime_error("the graph has no " + std::string(input ? "input" : "output") + " '" + name +
                           "', which its metadata names");
}

// A graph that contradicts its metadata would give wrong answers (labels shifted onto other classes, or logits read
// past the output), so it is refused as vggdeploy's own loader refuses it.
void CheckGraphAgainstMetadata(const Ort::Session& session, const json& metadata, const Preprocessing& spec) {
  const std::vector<int64_t> output = GraphShape(session, metadata.at("io").at("output").at("name"), false);
  const size_t labels = metadata.at("labels").size();
  if (output.size() != 2 || output[1] != static_cast<int64_t>(labels)) {
    throw std::runtime_error("the metadata names " + std::to_string(labels) + " labels, but the graph outputs " +
                             (output.size() == 2 && output[1] > 0 ? std::to_string(output[1]) : "an unknown number of") +
                             " classes");
  }
  const std::vector<int64_t> input = GraphShape(session, metadata.at("io").at("input").at("name"), true);
  const std::vector<int64_t> expected{spec.channels, spec.height, spec.width};
  if (input.size() != 4 || !std::equal(expected.begin(), expected.end(), input.begin() + 1)) {
    std::string graph;
    for (size_t i = 1; i < input.size(); ++i) graph += (i > 1 ? "x" : "") + std::to_string(input[i]);
    throw std::runtime_error("the metadata's preprocessing makes " + std::to_string(spec.channels) + "x" +
                             std::to_string(spec.height) + "x" + std::to_string(spec.width) +
                             " inputs, but the graph takes " + graph);
  }
}

// The metadata's contract for probabilities: softmax(logits / temperature), in double precision.
std::vector<double> Probabilities(const std::vector<float>& logits, double temperature) {
  const double peak = *std::max_element(logits.begin(), logits.end()) / temperature;
  std::vector<double> probabilities(logits.size());
  double total = 0;
  for (size_t i = 0; i < logits.size(); ++i) total += probabilities[i] = std::exp(logits[i] / temperature - peak);
  for (double& p : probabilities) p /= total;
  return probabilities;
}

// A whole positive integer, or 0 for anything else ("3x", "-1", "", out of range).
long long PositiveInteger(const char* text) {
  errno = 0;
  char* end = nullptr;
  const long long value = std::strtoll(text, &end, 10);
  return errno == 0 && end != text && *end == '\0' && value > 0 ? value : 0;
}

// The length of the well-formed UTF-8 sequence at text[i] (Unicode's table 3-7: no overlong forms, surrogates or
// code points past U+10FFFF), or 0 where the byte there starts none.
size_t Utf8SequenceLength(const std::string& text, size_t i) {
  const auto byte = [&](size_t k) { return i + k < text.size() ? static_cast<unsigned char>(text[i + k]) : 0u; };
  const unsigned lead = byte(0);
  if (lead < 0x80) return 1;
  size_t length = 0;
  unsigned low = 0x80, high = 0xBF;  // the range of the second byte; every later one is 80..BF
  if (lead >= 0xC2 && lead <= 0xDF) {
    length = 2;
  } else if (lead >= 0xE0 && lead <= 0xEF) {
    length = 3;
    low = lead == 0xE0 ? 0xA0 : 0x80;
    high = lead == 0xED ? 0x9F : 0xBF;
  } else if (lead >= 0xF0 && lead <= 0xF4) {
    length = 4;
    low = lead == 0xF0 ? 0x90 : 0x80;
    high = lead == 0xF4 ? 0x8F : 0xBF;
  } else {
    return 0;
  }
  for (size_t k = 1; k < length; ++k) {
    if (byte(k) < (k == 1 ? low : 0x80) || byte(k) > (k == 1 ? high : 0xBF)) return 0;
  }
  return length;
}

// A file name as valid UTF-8, each byte that is not UTF-8 written as the text \xNN, as vggdeploy run writes it: a JSON
// answer must be UTF-8 (nlohmann's dump throws on anything else, which once ended the run blaming the model).
std::string Readable(const std::string& name) {
  std::string text;
  for (size_t i = 0; i < name.size();) {
    if (const size_t length = Utf8SequenceLength(name, i)) {
      text.append(name, i, length);
      i += length;
    } else {
      char escaped[5];
      std::snprintf(escaped, sizeof escaped, "\\x%02x", static_cast<unsigned char>(name[i++]));
      text += escaped;
    }
  }
  return text;
}

}  // namespace

int main(int argc, char** argv) {
  const char* usage = "usage: classify MODEL.onnx IMAGE.png... [--top-k K] [--max-pixels N] [--json]\n";
  std::vector<std::string> images;
  std::string model_path;
  long long top_k = 3;
  long long max_pixels = 50'000'000;  // vggdeploy run's default: larger images are refused as decompression bombs
  bool as_json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--top-k" || arg == "--max-pixels") {
      const long long value = i + 1 < argc ? PositiveInteger(argv[++i]) : 0;
      if (value == 0) {
        std::cerr << "error: " << arg << " needs a positive whole number\n" << usage;
        return 2;
      }
      (arg == "--top-k" ? top_k : max_pixels) = value;
    } else if (arg == "--json") {
      as_json = true;
    } else if (arg.rfind("--", 0) == 0) {
      std::cerr << "error: unknown option " << arg << "\n" << usage;
      return 2;
    } else if (model_path.empty()) {
      model_path = arg;
    } else {
      images.push_back(arg);
    }
  }
  if (model_path.empty() || images.empty()) {
    std::cerr << usage;
    return 2;
  }
  try {
    Ort::Env env(ORT_LOGGING_LEVEL_ERROR, "vggdeploy");
    Ort::SessionOptions options;
    options.SetIntraOpNumThreads(1);
    Ort::Session session(env, model_path.c_str(), options);
    const json metadata = ReadMetadata(session);
    const Preprocessing spec = Preprocessing::FromMetadata(metadata.at("preprocessing"));
    const auto labels = metadata.at("labels").get<std::vector<std::string>>();
    const std::string input_name = metadata.at("io").at("input").at("name");
    const std::string output_name = metadata.at("io").at("output").at("name");
    if (metadata.at("io").at("input").at("dtype") != "float32") {
      throw std::runtime_error("this program takes the float32 model (model.onnx), not one whose input is " +
                               metadata.at("io").at("input").at("dtype").get<std::string>());
    }
    CheckGraphAgainstMetadata(session, metadata, spec);
    const double temperature = metadata.at("calibration").value("temperature", 1.0);
    const bool calibrated = metadata.at("calibration").value("fitted", false);
    // The familiarity output, where the model has it: an image scoring below the threshold is unlike the training
    // images, and its probabilities say nothing about it.
    const bool scored = !metadata.at("familiarity").is_null();
    const std::string familiarity_name = scored ? metadata.at("familiarity").at("output").get<std::string>() : "";
    const double threshold = scored ? metadata.at("familiarity").at("threshold").get<double>() : 0.0;
    if (scored) GraphShape(session, familiarity_name, false);  // refuses a graph without the output its metadata names

    int failures = 0;
    int not_finite = 0;  // images whose model output had a NaN or an infinity: a broken model, exit 4
    const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    for (const std::string& file : images) {
      const std::string path = Readable(file);  // the name as printed
      std::vector<float> input;
      try {
        input = ToModelInput(LoadPng(file, spec, max_pixels), spec);
      } catch (const std::exception& error) {
        std::cerr << "error: " << path << ": " << error.what() << "\n";
        ++failures;
        continue;
      }
      const std::array<int64_t, 4> shape{1, spec.channels, spec.height, spec.width};
      Ort::Value tensor = Ort::Value::CreateTensor<float>(memory, input.data(), input.size(), shape.data(), shape.size());
      const char* input_names[] = {input_name.c_str()};
      const char* output_names[] = {output_name.c_str(), familiarity_name.c_str()};
      auto outputs = session.Run(Ort::RunOptions{nullptr}, input_names, &tensor, 1, output_names, scored ? 2 : 1);
      const float* data = outputs[0].GetTensorData<float>();
      std::vector<float> logits(data, data + labels.size());
      if (!std::all_of(logits.begin(), logits.end(), [](float v) { return std::isfinite(v); })) {
        std::cerr << "error: " << path << ": the model's output is not finite (NaN or inf): no probabilities\n";
        ++not_finite;
        continue;
      }

      const std::vector<double> probabilities = Probabilities(logits, temperature);
      std::vector<size_t> order(logits.size());
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return probabilities[a] > probabilities[b]; });
      order.resize(std::min<size_t>(static_cast<size_t>(top_k), order.size()));

      if (as_json) {
        json top = json::array();
        for (size_t i : order) top.push_back({{"label", labels[i]}, {"index", i}, {"probability", probabilities[i]}});
        json answer{{"file", path}, {"logits", logits}, {"top", top}, {"calibrated", calibrated}, {"temperature", temperature},
                    {"familiarity", nullptr}, {"unfamiliar", nullptr}};
        if (scored) {
          const double score = outputs[1].GetTensorData<float>()[0];
          answer["familiarity"] = score;
          answer["unfamiliar"] = !(score >= threshold);  // a NaN score is no evidence of familiarity
        }
        std::cout << answer.dump() << "\n";
      } else {
        std::cout << path;
        for (size_t i : order) std::cout << "  " << labels[i] << " " << 100.0 * probabilities[i] << "%";
        if (scored && !(outputs[1].GetTensorData<float>()[0] >= threshold)) std::cout << "  (unfamiliar)";
        std::cout << "\n";
      }
    }
    std::cout.flush();
    if (!std::cout) {  // a full disk behind `> results.jsonl`: the answers are lost, so this is no success
      std::cerr << "error: standard output: the results could not be written (" << std::strerror(errno) << ")\n";
      return 7;
    }
    return not_finite ? 4 : failures ? 3 : 0;
  } catch (const std::exception& error) {
    std::cerr << "error: " << Readable(model_path) << ": " << error.what() << "\n";
    return 1;
  }
}
