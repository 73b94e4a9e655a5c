// Classifies PNG images with a vggdeploy .onnx through ONNX Runtime's C++ API. Labels, preprocessing and the
// input/output names all come from the model's metadata (GetModelMetadata); nothing is hard-coded.
//   classify MODEL.onnx IMAGE.png... [--top-k K] [--json]
#include <onnxruntime_cxx_api.h>
#include <png.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
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
  float mean = 0.0f;
  float std = 1.0f;
  std::array<float, 3> luma{};

  static Preprocessing FromMetadata(const json& p) {
    const json& resize = p.at("resize");
    if (p.at("color") != "grayscale" || resize.at("method") != "bilinear" ||
        resize.at("coordinate_transformation") != "half_pixel" || resize.at("antialias").get<bool>() ||
        p.at("alpha") != "composite_over_black") {
      throw std::runtime_error("unsupported preprocessing: " + p.dump());
    }
    Preprocessing spec;
    spec.height = resize.at("height");
    spec.width = resize.at("width");
    spec.mean = p.at("mean").at(0);
    spec.std = p.at("std").at(0);
    for (int i = 0; i < 3; ++i) spec.luma[i] = p.at("luma_weights").at(i);
    return spec;
  }
};

struct Image {
  int width = 0;
  int height = 0;
  std::vector<float> gray;  // [0, 1]
};

// Decodes any PNG (gray, RGB, palette, alpha, 16-bit) to RGBA8 with libpng's simplified API, then to grayscale
// exactly as vggdeploy/preprocess.py does: luma in float, alpha composited over black, scaled to [0, 1].
Image LoadPng(const std::string& path, const Preprocessing& spec) {
  png_image png{};
  png.version = PNG_IMAGE_VERSION;
  if (!png_image_begin_read_from_file(&png, path.c_str())) throw std::runtime_error(png.message);
  png.format = PNG_FORMAT_RGBA;
  std::vector<std::uint8_t> rgba(PNG_IMAGE_SIZE(png));
  if (!png_image_finish_read(&png, nullptr, rgba.data(), 0, nullptr)) throw std::runtime_error(png.message);
  Image image{static_cast<int>(png.width), static_cast<int>(png.height), {}};
  image.gray.resize(static_cast<size_t>(image.width) * image.height);
  for (size_t i = 0; i < image.gray.size(); ++i) {
    const std::uint8_t* p = &rgba[4 * i];
    const float luma = spec.luma[0] * p[0] + spec.luma[1] * p[1] + spec.luma[2] * p[2];
    image.gray[i] = luma * (p[3] / 255.0f) / 255.0f;
  }
  return image;
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
  std::vector<float> input(static_cast<size_t>(spec.height) * spec.width);
  for (int y = 0; y < spec.height; ++y) {
    const float* top = &image.gray[static_cast<size_t>(rows.lower[y]) * image.width];
    const float* bottom = &image.gray[static_cast<size_t>(rows.upper[y]) * image.width];
    const float fy = rows.fraction[y];
    for (int x = 0; x < spec.width; ++x) {
      const float fx = cols.fraction[x];
      const float upper = top[cols.lower[x]] * (1 - fx) + top[cols.upper[x]] * fx;
      const float lower = bottom[cols.lower[x]] * (1 - fx) + bottom[cols.upper[x]] * fx;
      input[static_cast<size_t>(y) * spec.width + x] = (upper * (1 - fy) + lower * fy - spec.mean) / spec.std;
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
  return decoded;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> images;
  std::string model_path;
  int top_k = 3;
  bool as_json = false;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--top-k" && i + 1 < argc) {
      top_k = std::stoi(argv[++i]);
    } else if (arg == "--json") {
      as_json = true;
    } else if (model_path.empty()) {
      model_path = arg;
    } else {
      images.push_back(arg);
    }
  }
  if (model_path.empty() || images.empty()) {
    std::cerr << "usage: classify MODEL.onnx IMAGE.png... [--top-k K] [--json]\n";
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
    if (metadata.at("io").at("input").at("dtype") != "float32") throw std::runtime_error("this program takes the float32 model");

    int failures = 0;
    const Ort::MemoryInfo memory = Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault);
    for (const std::string& path : images) {
      std::vector<float> input;
      try {
        input = ToModelInput(LoadPng(path, spec), spec);
      } catch (const std::exception& error) {
        std::cerr << "error: " << path << ": " << error.what() << "\n";
        ++failures;
        continue;
      }
      const std::array<int64_t, 4> shape{1, 1, spec.height, spec.width};
      Ort::Value tensor = Ort::Value::CreateTensor<float>(memory, input.data(), input.size(), shape.data(), shape.size());
      const char* input_names[] = {input_name.c_str()};
      const char* output_names[] = {output_name.c_str()};
      auto outputs = session.Run(Ort::RunOptions{nullptr}, input_names, &tensor, 1, output_names, 1);
      const float* data = outputs[0].GetTensorData<float>();
      std::vector<float> logits(data, data + labels.size());

      const float peak = *std::max_element(logits.begin(), logits.end());
      std::vector<double> probabilities(logits.size());
      double total = 0;
      for (size_t i = 0; i < logits.size(); ++i) total += probabilities[i] = std::exp(logits[i] - peak);
      std::vector<size_t> order(logits.size());
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return probabilities[a] > probabilities[b]; });
      order.resize(std::min<size_t>(std::max(top_k, 1), order.size()));

      if (as_json) {
        json top = json::array();
        for (size_t i : order) top.push_back({{"label", labels[i]}, {"index", i}, {"probability", probabilities[i] / total}});
        std::cout << json{{"file", path}, {"logits", logits}, {"top", top}}.dump() << "\n";
      } else {
        std::cout << path;
        for (size_t i : order) std::cout << "  " << labels[i] << " " << 100.0 * probabilities[i] / total << "%";
        std::cout << "\n";
      }
    }
    return failures ? 3 : 0;
  } catch (const std::exception& error) {
    std::cerr << "error: " << error.what() << "\n";
    return 1;
  }
}
