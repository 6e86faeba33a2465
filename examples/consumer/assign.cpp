// Label assignment from an application linked against the installed bloodcv::assign target (which brings
// LibTorch): two anchors, one cell; the anchor that covers the cell learns it, the other learns background.
#include <cstdio>

#include <ATen/ATen.h>
#include <bloodcv/assign.hpp>

int main() {
  bloodcv::AssignInput input;
  input.anchors = at::tensor({0.f, 0.f, 10.f, 10.f, 50.f, 50.f, 60.f, 60.f}).view({2, 4});
  input.gt_boxes = at::tensor({1.f, 1.f, 10.f, 10.f}).view({1, 4});
  input.gt_labels = at::tensor({int64_t{3}});
  const bloodcv::AssignResult result = bloodcv::MaxIoUAssigner().assign(input);
  const auto gt = result.gt_index.accessor<int64_t, 1>();
  std::printf("anchor 0 -> %lld, anchor 1 -> %lld (label %lld)\n", static_cast<long long>(gt[0]), static_cast<long long>(gt[1]),
              static_cast<long long>(result.labels[0].item<int64_t>()));
  return gt[0] == 0 && gt[1] == bloodcv::kBackground ? 0 : 1;
}
