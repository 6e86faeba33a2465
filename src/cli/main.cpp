// The bloodcv command-line program: `bloodcv analyze` (the full analysis), `bloodcv eval`, `bloodcv tile`,
// `bloodcv serve` (the laboratory web application, in Python).
#include <iostream>

#include "bloodcv/version.hpp"
#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"bloodcv: find, classify and count cells in blood and bone-marrow smear images"};
  app.set_version_flag("--version", std::string("bloodcv ") + bloodcv::kVersion);
  app.require_subcommand(1);
  const bloodcv::cli::Runner runners[] = {bloodcv::cli::add_analyze_command(app), bloodcv::cli::add_eval_command(app),
                                               bloodcv::cli::add_tile_command(app), bloodcv::cli::add_serve_command(app)};
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  try {
    for (const auto& run : runners)
      if (const int rc = run(); rc >= 0) return rc;
  } catch (const std::exception& e) {
    std::cerr << "bloodcv: error: " << e.what() << '\n';
    return 1;
  }
  return 0;
}
